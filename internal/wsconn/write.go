package wsconn

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// flushAt is the batch size at which a batch is written before it is
// complete.
const flushAt = 64 << 10

// batchBuffers lends batch buffers to busy writers: a batch is built in a
// buffer that another batch already grew, and an idle connection holds
// none.
var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, flushAt+4<<10); return &b }}

// getBatch returns the batch held back by cork, or a pooled buffer.
// Lock must be held.
func (c *netConn) getBatchLocked() []byte {
	buf := c.buf
	if buf == nil {
		buf = (*batchBuffers.Get().(*[]byte))[:0]
	}
	c.buf = nil
	return buf
}

// putBatch gives a written batch buffer back, unless a burst grew it large.
func putBatch(buf []byte) {
	if cap(buf) <= 2*flushAt {
		b := buf[:0]
		batchBuffers.Put(&b)
	}
}

// Write is how the library (and the TLS layer above) writes: held back in
// the batch while corked, else written after any tail.
func (c *netConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeSent = c.closeSent || c.framed && wsframe.IsClose(p)
	if c.corked {
		if c.buf == nil {
			c.buf = (*batchBuffers.Get().(*[]byte))[:0]
		}
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushTailLocked(); err != nil {
		return 0, err
	}
	return c.writeLocked(p)
}

// writeFrames sends what the batch holds (the 101 response of a new
// connection), the tail of a write that could not wait, and frames, each
// framed as a text frame, in one socket write per flushAt bytes, and
// uncorks. Only for a framed connection.
func (c *netConn) writeFrames(frames [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if c.closeSent {
		return fmt.Errorf("write %d frames: %w", len(frames), net.ErrClosed)
	}
	buf := append(c.getBatchLocked(), c.tail...)
	c.tail = nil
	var err error
	for _, f := range frames {
		buf = wsframe.AppendText(buf, f)
		if len(buf) >= flushAt {
			if _, err = c.writeLocked(buf); err != nil {
				break
			}
			buf = buf[:0]
		}
	}
	if err == nil && len(buf) > 0 {
		_, err = c.writeLocked(buf)
	}
	putBatch(buf)
	if err != nil {
		return fmt.Errorf("write %d frames: %w", len(frames), err)
	}
	return nil
}

// tryWrite writes frame, already framed, to the socket if it can do so
// without waiting: no batch or tail is pending, no close frame went out,
// and the socket takes the bytes now. took is false when nothing was
// written (the caller queues the frame); tail is true when the socket took
// only part of it and the rest must go before anything else. frame is
// shared by every client of a fan-out and never changed, so the tail may
// point into it.
//
// A write in progress (the library answering a ping or a close while the
// socket is full) holds mu: tryWrite then does not wait for it.
func (c *netConn) tryWrite(frame []byte) (took, tail bool) {
	if !c.mu.TryLock() {
		return false, false
	}
	defer c.mu.Unlock()
	if c.fd < 0 || c.corked || len(c.tail) > 0 || c.closeSent {
		return false, false
	}
	n := c.writeNow(frame)
	switch {
	case n == 0:
		// Full (EAGAIN) or failed: the writer tries again, and reports a
		// failure that persists.
		return false, false
	case n < len(frame):
		c.tail = frame[n:]
		return true, true
	}
	return true, false
}

// tryWriteFrames is writeFrames without waiting: what writeFrames would
// send goes out in one non-blocking write, and what the socket did not
// take is kept as the tail. took is false, with nothing taken, when
// another write holds the connection (the frames are still the caller's);
// tail is true when a tail is left, or the write failed, for a writer that
// may wait to send it.
func (c *netConn) tryWriteFrames(frames [][]byte) (took, tail bool) {
	if !c.mu.TryLock() {
		return false, false
	}
	defer c.mu.Unlock()
	c.corked = false
	buf := append(c.getBatchLocked(), c.tail...)
	for _, f := range frames {
		buf = wsframe.AppendText(buf, f)
	}
	if c.closeSent {
		// No data frame may follow the close frame; the writer's next
		// write reports it.
		c.tail = nil
		return true, true
	}
	n := 0
	if c.fd >= 0 {
		n = c.writeNow(buf)
	}
	if n < len(buf) {
		// The tail keeps the batch buffer; it is garbage once sent.
		c.tail = buf[n:]
		return true, true
	}
	c.tail = nil
	putBatch(buf)
	return true, false
}

// tailPending reports whether part of a write may wait to be sent: a tail
// is left, or another write holds the connection and may leave one.
func (c *netConn) tailPending() bool {
	if !c.mu.TryLock() {
		return true
	}
	defer c.mu.Unlock()
	return len(c.tail) > 0
}

// writeNow writes p to the socket if it takes the bytes at once and
// returns how many it took; 0 when it would wait, the write failed or the
// connection is closed (the writer that then sends the rest reports the
// failure). The socket is non-blocking, as the net package keeps it.
// Lock must be held.
func (c *netConn) writeNow(p []byte) int {
	c.fdMu.RLock()
	defer c.fdMu.RUnlock()
	if c.fdClosed || len(p) == 0 {
		return 0
	}
	return sendNow(c.fd, p)
}

// flushTail sends the tail that a write that could not wait left, if any.
func (c *netConn) flushTail() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushTailLocked()
}

func (c *netConn) flushTailLocked() error {
	if len(c.tail) == 0 {
		return nil
	}
	if _, err := c.writeLocked(c.tail); err != nil {
		return fmt.Errorf("write the rest of a frame: %w", err)
	}
	c.tail = nil
	return nil
}

// writeLocked writes to the socket, marked as in progress for the broker's
// watchdog, which closes the connection when a write takes longer than the
// write timeout: no write (a control frame to a client that stopped
// reading, say) holds the socket, and the library's lock, for ever. A
// watchdog instead of a deadline per write: setting a deadline updates a
// runtime timer on every write, which cost about a tenth of the CPU of a
// broadcast to 10,000 clients.
func (c *netConn) writeLocked(p []byte) (int, error) {
	c.writingSince.Store(time.Now().UnixNano())
	defer c.writingSince.Store(0)
	return c.Conn.Write(p)
}

// stalled tells whether a write has been in progress for longer than d.
func (c *netConn) stalled(now time.Time, d time.Duration) bool {
	return since(&c.writingSince, now, d)
}

// since tells whether t, a time in UnixNano or 0 for none, is more than d
// before now; a d of 0 is no bound.
func since(t *atomic.Int64, now time.Time, d time.Duration) bool {
	at := t.Load()
	return at != 0 && d > 0 && now.UnixNano()-at > int64(d)
}

// cork holds back what is written from now on, until uncork.
func (c *netConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// buffered returns how much the batch holds.
func (c *netConn) buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// uncork sends the batch in one write.
func (c *netConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.writeLocked(c.buf)
	putBatch(c.buf)
	c.buf = nil
	return err
}
