package wsconn

import (
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// frameTracker follows the client's frames, control frames included, in
// the bytes the library reads from a plain connection, so that the
// watchdog knows whether a frame is part way in: from the read that finds
// its first byte to the one that finds its last. A client that sends half
// a frame is then dropped after the frame timeout, and one idle between
// frames (after a ping, say) never is. Bytes left in the socket because the
// session does not read (its uplink is full) do not count against the
// client. Guarded by netConn.rmu.
type frameTracker struct {
	on    bool     // tracking: a plain connection, from the hijack on
	head  [14]byte // the header read so far
	nhead int
	left  int // payload bytes of the current frame still to come
}

// feed follows p, the next bytes read, and tells whether a frame is part
// way in after them. A stream that breaks RFC 6455 stops the tracking: the
// library closes such a connection itself.
func (t *frameTracker) feed(p []byte) bool {
	for len(p) > 0 {
		if t.left > 0 {
			k := min(t.left, len(p))
			t.left -= k
			p = p[k:]
			continue
		}
		k := copy(t.head[t.nhead:], p)
		h, n, err := wsframe.ParseHeader(t.head[:t.nhead+k])
		switch {
		case err != nil:
			t.on = false
			return false
		case n == 0: // more of the header to come
			t.nhead += k
			p = p[k:]
			continue
		}
		p = p[n-t.nhead:]
		t.nhead, t.left = 0, h.Length
	}
	return t.nhead > 0 || t.left > 0
}

// trackLocked follows the bytes a read returned, and marks when a frame
// began, or that none is part way in. rmu must be held.
func (c *netConn) trackLocked(p []byte) {
	if !c.frames.on || len(p) == 0 {
		return
	}
	c.markFrameLocked(c.frames.feed(p))
}

// markFrameLocked marks when a frame began, or that none is part way in.
// rmu must be held.
func (c *netConn) markFrameLocked(inFrame bool) {
	switch {
	case !inFrame:
		c.frameSince.Store(0)
	case c.frameSince.Load() == 0:
		c.frameSince.Store(time.Now().UnixNano())
	}
}
