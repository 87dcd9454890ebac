package wsconn

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dmb-broker/dmb/internal/spread"
)

// netConn is a server connection accepted through Listen: the socket
// beneath the WebSocket library, whose writes can be batched and whose
// small reads hold a buffer only while bytes wait.
type netConn struct {
	net.Conn

	// Write state, guarded by mu, which is held across the socket write
	// (see the package doc for the lock order).
	mu sync.Mutex
	// corked holds what is written back in buf until uncork.
	corked bool
	buf    []byte
	// framed is set when the library runs on this connection itself (no
	// TLS between): DMB frames the data frames and the library writes
	// only its control frames, each whole (see leanWriter).
	framed bool
	// fd is the socket's descriptor, for writes that must not wait
	// (writeNow); -1 when the connection has none.
	fd int
	// tail is what a write that could not wait left of its bytes: it goes
	// before anything else written to the socket.
	tail []byte
	// closeSent is set once the library wrote a close frame: no data
	// frame may follow it.
	closeSent bool
	// writingSince is when the socket write in progress began (UnixNano),
	// 0 when none is; the broker's watchdog reads it without mu.
	writingSince atomic.Int64

	// Close state: fdMu is read-held by writeNow and taken by Close, so
	// that the descriptor is not closed, and its number reused by the next
	// connection, during an inline write.
	fdMu     sync.RWMutex
	fdClosed bool

	// frameSince is when the frame being read began to arrive (UnixNano), 0
	// between frames (see frameTracker); the broker's watchdog reads it
	// without a lock.
	frameSince atomic.Int64

	// closeReads, once Close set it, is what may still be read: a close
	// handshake reads and discards what the client sent before its close
	// frame, which a flooder has filled the socket with. 0: no bound.
	closeReads atomic.Int64

	// discardAsk is the budget plus one that discardFrames asked the
	// reader to drop data frames within, 0 when none is asked; canDiscard
	// is set when the client's frames are followed from the hijack on.
	discardAsk atomic.Int64
	canDiscard atomic.Bool

	// Read state, guarded by rmu, which is held across the read.
	rmu     sync.Mutex
	raw     syscall.RawConn       // nil until a small read needs it, or when there is none
	noRaw   bool                  // the connection has no descriptor to read from
	readFn  func(fd uintptr) bool // fill's callback, made once with raw: one per read would allocate
	got     int                   // what readFn read, for fill
	gotErr  error                 // why readFn read nothing, for fill
	pending *[]byte               // bytes read and not yet asked for, from readBuffers
	unread  []byte                // what of pending is still to be handed out
	readErr error                 // what awaitInput met, for the read that follows
	frames  frameTracker          // where the client's frames begin and end
	discard discarder             // drops the data frames of a closing session

	// The library's buffered reader when leanWriter made it, guarded by
	// brMu: awaitInput looks into it until handOverReads.
	brMu   sync.Mutex
	br     *bufio.Reader
	handed bool

	// share lengthens the HTTP server's read deadlines (the request's,
	// the idle keep-alive's), until hijacked is set: see SetReadDeadline.
	// The two sit in what is padding after handed otherwise.
	share    spread.Share
	hijacked atomic.Bool
}

// SetReadDeadline sets the read deadline. Until the hijack, when the
// WebSocket's own bounds take over, the deadline is moved later by the
// connection's share of the time left until it: requests that a thousand
// connections opened together never finish are then not all cut in the
// same instant.
func (c *netConn) SetReadDeadline(t time.Time) error {
	if !c.hijacked.Load() {
		t = c.share.Deadline(t)
	}
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines, the read one as SetReadDeadline does.
func (c *netConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// Listen wraps ln so that the connections it accepts can be served by
// Accept with batched writes and lean buffers; serve it with an http.Server
// whose ConnContext is ConnContext.
func Listen(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &netConn{Conn: c, fd: -1, share: spread.New()}, nil
}

type connKey struct{}

// ConnContext puts the accepted connection into the request context, where
// Accept finds it. Under TLS the connection that batches is the one
// beneath, so a batch of frames still leaves in one write.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if nc, ok := c.(*netConn); ok {
		return context.WithValue(ctx, connKey{}, nc)
	}
	return ctx
}

func netConnFrom(ctx context.Context) *netConn {
	nc, _ := ctx.Value(connKey{}).(*netConn)
	return nc
}

// Close closes the connection once no inline write is in progress, and
// keeps any from starting.
func (c *netConn) Close() error {
	c.fdMu.Lock()
	c.fdClosed = true
	c.fdMu.Unlock()
	return c.Conn.Close()
}
