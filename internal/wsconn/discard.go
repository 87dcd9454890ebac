package wsconn

import (
	"errors"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// A closing session throws away the data frames its client sends until
// the client's close frame comes. A flooder closed for its rate has filled
// its socket with frames by then, and reading each through the WebSocket
// library (a header read a byte at a time, a lock and a channel per frame)
// took most of a node's CPU under a flood. Once the session discards, the
// netConn drops the data frames itself, below the library, a socket read
// at a time: the library sees only the control frames (the client's close
// above all) and never wakes for a frame it would throw away.

// errDiscardBudget ends a connection whose client sent more than the
// discard budget after its session began to close.
var errDiscardBudget = errors.New("wsconn: the client sent too much after its session began to close")

// discarder drops the data frames of a client's byte stream and keeps its
// control frames, for a connection whose frames the library no longer
// hands out. It follows the stream from where frameTracker was when the
// dropping began. Guarded by netConn.rmu.
type discarder struct {
	on bool
	// pass: the payload bytes still to come of the current frame (the
	// tracker's left) go to the library: a control frame, or the frame the
	// library was reading when the dropping began.
	pass bool
	// handed is how much of the header in progress the library has read
	// already: the frame it begins goes to the library whatever it is.
	handed int
	// budget is what may still be dropped, in bytes.
	budget int
	// lead holds header bytes of a frame that goes to the library which
	// came in the read before: they are handed out before unread.
	lead  [14]byte
	nlead int
}

// filter drops the data frames of b, the next bytes of the stream, from
// b in place, following the frames with t; it returns b's bytes that go to
// the library, after d.lead, and how many were dropped. A stream that
// breaks RFC 6455 is handed over whole from the bad header on, and the
// dropping stops: the library closes such a connection itself.
func (d *discarder) filter(t *frameTracker, b []byte) (out []byte, dropped int) {
	w := 0
	for i := 0; i < len(b); {
		if t.left > 0 {
			k := min(t.left, len(b)-i)
			if d.pass {
				w += copy(b[w:], b[i:i+k])
			} else {
				dropped += k
			}
			i += k
			t.left -= k
			continue
		}
		hs := i
		k := copy(t.head[t.nhead:], b[i:])
		h, n, err := wsframe.ParseHeader(t.head[:t.nhead+k])
		if err != nil {
			d.nlead += copy(d.lead[d.nlead:], t.head[d.handed:t.nhead])
			w += copy(b[w:], b[hs:])
			d.on, t.on, t.nhead, t.left = false, false, 0, 0
			return b[:w], dropped
		}
		if n == 0 { // the rest of the header comes with the next read
			t.nhead += k
			i += k
			continue
		}
		used := n - t.nhead // the header's bytes in b
		d.pass = d.handed > 0 || h.Op&0x8 != 0
		if d.pass {
			// Only the first frame of b can have begun in a read before,
			// so w is 0 and the lead goes before b[:w].
			d.nlead += copy(d.lead[d.nlead:], t.head[d.handed:t.nhead])
			w += copy(b[w:], b[hs:hs+used])
		} else {
			dropped += n
		}
		i = hs + used
		t.nhead, t.left, d.handed = 0, h.Length, 0
	}
	return b[:w], dropped
}

// discardFrames makes reads drop the client's data frames from the next
// read on, budget bytes of them at most (then the read fails); false when
// the connection cannot see where its frames begin (under TLS, or when the
// HTTP server had read past the request), and the library reads on as
// before. Called again, it lowers the budget to budget at most. It never
// waits: a read in progress (the library waiting for the client) holds
// rmu, so the reader takes the request up itself (applyDiscardLocked).
func (c *netConn) discardFrames(budget int) bool {
	if !c.canDiscard.Load() {
		return false
	}
	want := int64(max(budget, 0)) + 1
	for {
		ask := c.discardAsk.Load()
		if ask != 0 && ask <= want || c.discardAsk.CompareAndSwap(ask, want) {
			return true
		}
	}
}

// applyDiscardLocked starts dropping the data frames, or lowers the
// budget, as discardFrames asked. rmu must be held.
func (c *netConn) applyDiscardLocked() {
	ask := c.discardAsk.Swap(0)
	switch {
	case ask == 0:
		return
	case c.discard.on:
		c.discard.budget = min(c.discard.budget, int(ask-1))
		return
	case !c.frames.on: // the stream broke RFC 6455: the library ends it
		return
	}
	// The tracker is where the library is: the rest of a frame it began
	// is its own.
	c.discard = discarder{on: true, budget: int(ask - 1), pass: c.frames.left > 0, handed: c.frames.nhead}
	c.filterUnreadLocked()
}

// discardReadLocked is Read while the data frames are dropped: it reads
// until a control frame's bytes come, or the reads fail, or more than the
// budget was dropped, or a close handshake read what it may. rmu must be
// held.
func (c *netConn) discardReadLocked(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for c.discard.on && c.discard.nlead == 0 && c.unread == nil && c.readErr == nil {
		if r := c.closeReads.Load(); r != 0 && r <= 1 {
			return 0, errCloseReads
		}
		c.fillAnyLocked()
		c.filterUnreadLocked()
	}
	if d := &c.discard; d.nlead > 0 {
		n := copy(p, d.lead[:d.nlead])
		d.nlead = copy(d.lead[:], d.lead[n:d.nlead])
		return n, nil
	}
	if c.unread != nil || !c.discard.on {
		// After a stream that broke RFC 6455, the reads go on as before.
		if c.unread == nil {
			return c.readLocked(p)
		}
		n := copy(p, c.unread)
		if c.unread = c.unread[n:]; len(c.unread) == 0 {
			c.releaseUnreadLocked()
		}
		return n, nil
	}
	err := c.readErr
	c.readErr = nil
	return 0, err
}

// fillAnyLocked reads what the socket holds into a pooled buffer, through
// the descriptor when there is one. rmu must be held.
func (c *netConn) fillAnyLocked() {
	if c.rawReadyLocked() {
		c.fillLocked()
		return
	}
	buf := readBuffers.Get().(*[]byte)
	n, err := c.Conn.Read(*buf)
	if n > 0 {
		c.pending, c.unread = buf, (*buf)[:n]
	} else {
		readBuffers.Put(buf)
	}
	c.readErr = err
}

// filterUnreadLocked drops the data frames of what was read and not yet
// handed out, counts them against the budget and a close handshake's
// bound, and marks whether a frame is part way in. rmu must be held.
func (c *netConn) filterUnreadLocked() {
	if c.unread == nil || !c.discard.on {
		return
	}
	out, dropped := c.discard.filter(&c.frames, c.unread)
	c.discard.budget -= dropped
	if c.closeReads.Load() != 0 {
		c.closeReads.Add(-int64(dropped))
	}
	if c.unread = out; len(out) == 0 {
		c.releaseUnreadLocked()
	}
	if c.discard.budget < 0 && c.readErr == nil {
		c.readErr = errDiscardBudget
	}
	if c.frames.on {
		c.markFrameLocked(c.frames.nhead > 0 || c.frames.left > 0)
	} else {
		c.frameSince.Store(0)
	}
}

// releaseUnreadLocked gives the read buffer back once everything in it
// was handed out. rmu must be held.
func (c *netConn) releaseUnreadLocked() {
	readBuffers.Put(c.pending)
	c.pending, c.unread = nil, nil
}
