package wsconn

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
)

// readBufferSize is how much one small read takes from the socket: what the
// HTTP server's and the WebSocket library's buffered readers would take.
const readBufferSize = 4 << 10

// readBuffers lends read buffers to connections that have bytes waiting.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

// Read reads like the connection beneath, except that a small read (the
// WebSocket library's buffered reader filling its few bytes) takes what the
// socket holds into a pooled buffer, and only once the socket is readable:
// a connection that waits for its client to speak holds no read buffer at
// all.
func (c *netConn) Read(p []byte) (int, error) {
	bounded := c.closeReads.Load() != 0
	if bounded && c.closeReads.Load() <= 1 {
		return 0, errCloseReads
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.applyDiscardLocked()
	if c.discard.on || c.discard.nlead > 0 {
		// What is handed out was followed when it was read.
		n, err := c.discardReadLocked(p)
		if bounded {
			c.closeReads.Add(-int64(n))
		}
		return n, err
	}
	n, err := c.readLocked(p)
	c.trackLocked(p[:n])
	if bounded {
		c.closeReads.Add(-int64(n))
	}
	return n, err
}

// errCloseReads ends a close handshake that read what it may.
var errCloseReads = errors.New("wsconn: the client sent too much after the close began")

// closeReadBytes bounds what a close handshake reads before the client's
// close frame: more than a client that reads has in flight, far less
// than the socket buffer a flooder fills.
const closeReadBytes = 256 << 10

// boundCloseReads bounds what is read from now on (see closeReads).
func (c *netConn) boundCloseReads() { c.closeReads.CompareAndSwap(0, closeReadBytes+1) }

// readLocked is Read with rmu held.
func (c *netConn) readLocked(p []byte) (int, error) {
	if c.unread == nil && c.readErr == nil {
		if len(p) >= readBufferSize || len(p) == 0 || !c.rawReadyLocked() {
			return c.Conn.Read(p)
		}
		c.fillLocked()
	}
	if err := c.readErr; err != nil {
		c.readErr = nil
		return 0, err
	}
	n := copy(p, c.unread)
	c.unread = c.unread[n:]
	if len(c.unread) == 0 {
		readBuffers.Put(c.pending)
		c.pending, c.unread = nil, nil
	}
	return n, nil
}

// fillLocked waits until the socket is readable, then reads what it holds
// into a pooled buffer, or records why it could not. rmu must be held.
func (c *netConn) fillLocked() {
	c.got, c.gotErr = 0, nil
	err := c.raw.Read(c.readFn)
	n, rerr := c.got, c.gotErr
	switch {
	case err == nil && rerr != nil:
		err = os.NewSyscallError("read", rerr)
	case err == nil && n == 0:
		c.readErr = io.EOF
		return
	}
	if err != nil {
		c.readErr = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
		return
	}
	c.unread = (*c.pending)[:n]
}

// readOnce is fill's callback: one read of the socket into a pooled
// buffer, which becomes c.pending when it took something. It returns false
// to have the runtime wait until the socket is readable. rmu is held.
func (c *netConn) readOnce(fd uintptr) bool {
	buf := readBuffers.Get().(*[]byte)
	n, err := readFD(fd, *buf)
	c.got, c.gotErr = max(n, 0), nil
	if n > 0 {
		c.pending = buf
		return true
	}
	readBuffers.Put(buf)
	if isWouldBlock(err) { // nothing yet
		return false
	}
	c.gotErr = err
	return true
}

// awaitInput returns once the client has sent something that the next
// read will find, or the connection failed (which that read then reports).
// The session calls it before each read so that an idle client waits here,
// a few frames deep, rather than deep inside the WebSocket library: the
// garbage collector then shrinks the goroutine's stack to the smallest
// size, and new sessions start with it. Without a reader made by
// leanWriter it returns at once.
func (c *netConn) awaitInput() {
	c.brMu.Lock()
	skip := c.br == nil || c.handed || c.br.Buffered() > 0
	c.brMu.Unlock()
	if skip {
		return
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.applyDiscardLocked()
	if c.unread == nil && c.readErr == nil && c.rawReadyLocked() {
		c.fillLocked()
		if c.discard.on {
			c.filterUnreadLocked()
		}
	}
}

// handOverReads tells awaitInput to leave the library's reader alone from
// now on: the library is about to read in its close handshake, from the
// goroutine that closes.
func (c *netConn) handOverReads() {
	c.brMu.Lock()
	c.handed = true
	c.brMu.Unlock()
}

// rawReadyLocked finds the descriptor that small reads go to, once. rmu
// must be held.
func (c *netConn) rawReadyLocked() bool {
	if c.raw != nil || c.noRaw {
		return c.raw != nil
	}
	if rawSockets {
		c.raw = rawConn(c.Conn)
	}
	c.noRaw = c.raw == nil
	if c.raw != nil {
		c.readFn = c.readOnce
	}
	return c.raw != nil
}
