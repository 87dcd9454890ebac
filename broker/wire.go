package broker

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// corkConn is a server connection whose writes can be held back and sent
// together: the session's writer corks it, lets the WebSocket library write
// every queued frame (each of which it would flush on its own), and uncorks
// it, so that a batch of frames costs one write system call instead of one
// per frame.
//
// Only the session's writer corks and uncorks. Control frames that the
// library writes from the reading goroutine meanwhile join the batch. mu is
// held across the socket write on purpose: it keeps the bytes in the order
// they were produced, which TLS records (numbered in sequence) require.
type corkConn struct {
	net.Conn

	mu      sync.Mutex // orders writes to the socket; guards the fields below
	corked  bool
	buf     []byte
	timeout time.Duration // bounds every socket write; 0 until a session sets it
}

// corkFlushAt is the batch size at which the writer uncorks early.
const corkFlushAt = 64 << 10

// batchBuffers lends batch buffers to busy writers: a batch is built in a
// buffer that another batch already grew, and an idle client holds none.
var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, corkFlushAt+4<<10); return &b }}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		if c.buf == nil {
			c.buf = (*batchBuffers.Get().(*[]byte))[:0]
		}
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.writeLocked(p)
}

// writeLocked writes to the socket within the write timeout, so that no
// write (a control frame to a client that stopped reading, say) can hold
// the socket, and the WebSocket library's lock, for ever.
func (c *corkConn) writeLocked(p []byte) (int, error) {
	if c.timeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
		defer c.Conn.SetWriteDeadline(time.Time{})
	}
	return c.Conn.Write(p)
}

// setTimeout sets the bound of every socket write.
func (c *corkConn) setTimeout(d time.Duration) {
	c.mu.Lock()
	c.timeout = d
	c.mu.Unlock()
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// buffered returns how much the batch holds.
func (c *corkConn) buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// uncork sends the batch in one write, within the write timeout.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.writeLocked(c.buf)
	if cap(c.buf) <= 2*corkFlushAt {
		b := c.buf[:0]
		batchBuffers.Put(&b)
	}
	c.buf = nil
	return err
}

// listener wraps accepted connections in corkConn.
type listener struct{ net.Listener }

// Listen wraps ln so that the broker can coalesce the writes of the sessions
// it accepts; serve it with an http.Server whose ConnContext is ConnContext.
func Listen(ln net.Listener) net.Listener { return listener{ln} }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: c}, nil
}

type connKey struct{}

// ConnContext puts the accepted connection into the request context, where
// the WebSocket handler finds it. Under TLS the corkable connection is the
// one beneath, so a batch of frames still leaves in one write.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if cc, ok := c.(*corkConn); ok {
		return context.WithValue(ctx, connKey{}, cc)
	}
	return ctx
}

func corkConnFrom(ctx context.Context) *corkConn {
	cc, _ := ctx.Value(connKey{}).(*corkConn)
	return cc
}
