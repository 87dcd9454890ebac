package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
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
//
// On a plain connection (framed) the broker writes data frames itself:
// the writer frames a batch with writeFrames, and the fan-out writes a
// broadcast's frame with tryWrite when the socket takes it at once. The
// library then writes only its control frames, each whole, through Write;
// all three take mu, so frames never interleave.
//
// Reads hold a buffer only while it has unread bytes, see Read.
type corkConn struct {
	net.Conn

	mu      sync.Mutex // orders writes to the socket; guards the fields below
	corked  bool
	buf     []byte
	watched bool // the broker's watchdog bounds the socket writes; set by the session

	// writingSince is when the socket write in progress began (UnixNano),
	// 0 when none is; read by the broker's watchdog.
	writingSince atomic.Int64

	// framed is set when the WebSocket library runs on this connection
	// itself (no TLS between): the broker then frames the data frames and
	// the library writes only its control frames (pong, close), each whole
	// in one write (see leanWriter). A broadcast is framed once and the
	// same bytes are written to every client (Broker.Broadcast), and a
	// writer frames a batch straight into the buffer it writes; Write keeps
	// both kinds of write in order.
	framed bool
	// fd is the socket's file descriptor, for writes that must not wait
	// (writeNow); -1 when the connection has none. It is written to
	// directly, not through the net package, whose locks and poller
	// checks cost about a tenth of a broadcast's CPU; fdMu keeps it from
	// being closed, and its number reused, during such a write.
	fd int
	// tail is what a write that could not wait left of its frame: it goes
	// before anything else written to the socket.
	tail []byte
	// closeSent is set once the library wrote a close frame: no data
	// frame may follow it.
	closeSent bool

	// rmu orders the reads of the session (awaitInput, then the library's)
	// against those of the library's close handshake, which the writer
	// runs; it is held across the read on purpose: two readers of one
	// socket must take turns anyway. It guards the fields below.
	fdMu     sync.RWMutex // read-held by writeNow; Close takes it; guards fdClosed
	fdClosed bool

	rmu     sync.Mutex
	raw     syscall.RawConn       // nil until a small read needs it, or when there is none
	noRaw   bool                  // the connection has no file descriptor to read from
	readFn  func(fd uintptr) bool // fill's callback, made once with raw: a new one per read would cost three allocations
	got     int                   // what readFn read, for fill
	gotErr  error                 // why readFn read nothing, for fill
	pending *[]byte               // bytes read and not yet asked for, from readBuffers
	unread  []byte                // what of pending is still to be handed out
	readErr error                 // what awaitInput met, for the read that follows

	// br is the library's buffered reader when leanWriter made it; awaitInput
	// looks into it, until handOverReads, under brMu.
	brMu   sync.Mutex
	br     *bufio.Reader
	handed bool
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
		c.closeSent = c.closeSent || c.framed && wsframe.IsClose(p)
		return len(p), nil
	}
	if err := c.flushTailLocked(); err != nil {
		return 0, err
	}
	n, err := c.writeLocked(p)
	c.closeSent = c.closeSent || c.framed && wsframe.IsClose(p)
	return n, err
}

// writeFrames sends what the batch holds (the 101 response of a new
// connection), the tail of a frame that a direct write left, and frames,
// each framed as a text frame, in one socket write (per corkFlushAt bytes)
// and uncorks. Only for a framed connection.
func (c *corkConn) writeFrames(frames [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if c.closeSent {
		return fmt.Errorf("write %d frames: %w", len(frames), net.ErrClosed)
	}
	buf := c.buf
	if buf == nil {
		buf = (*batchBuffers.Get().(*[]byte))[:0]
	}
	c.buf = nil
	buf = append(buf, c.tail...)
	c.tail = nil
	var err error
	for _, f := range frames {
		buf = wsframe.AppendText(buf, f)
		if len(buf) >= corkFlushAt {
			if _, err = c.writeLocked(buf); err != nil {
				break
			}
			buf = buf[:0]
		}
	}
	if err == nil && len(buf) > 0 {
		_, err = c.writeLocked(buf)
	}
	if cap(buf) <= 2*corkFlushAt {
		b := buf[:0]
		batchBuffers.Put(&b)
	}
	if err != nil {
		return fmt.Errorf("write %d frames: %w", len(frames), err)
	}
	return nil
}

// writeOutcome says how much of a frame tryWrite sent.
type writeOutcome uint8

const (
	wroteNone writeOutcome = iota // nothing: queue the frame
	wrotePart                     // the rest is the tail, which a writer must send
	wroteAll
)

// tryWrite writes frame, already framed, to the socket if it can do so
// without waiting: no batch or tail is pending, no close frame went out,
// and the socket takes the bytes now. It is the fan-out's way to deliver to
// a client whose queue is empty and that has no writer running, which is
// every client most of the time at a few broadcasts a second: one system
// call, no goroutine to wake, no timer for a deadline (a write that does
// not wait needs none). frame is shared by every client of a broadcast and
// never changed, so the tail may point into it.
//
// A write in progress (the library answering a ping or a close while the
// socket is full) holds the lock: tryWrite then does not wait for it.
func (c *corkConn) tryWrite(frame []byte) writeOutcome {
	if !c.mu.TryLock() {
		return wroteNone
	}
	defer c.mu.Unlock()
	if c.fd < 0 || c.corked || len(c.tail) > 0 || c.closeSent {
		return wroteNone
	}
	n := c.writeNow(frame)
	switch {
	case n == 0:
		// Full (EAGAIN) or failed: the writer tries again, and reports
		// the failure if it persists.
		return wroteNone
	case n < len(frame):
		c.tail = frame[n:]
		return wrotePart
	}
	return wroteAll
}

// tryWriteFrames is writeFrames without waiting: it writes what writeFrames
// would in one non-blocking write, and keeps what the socket did not take
// as the tail. It returns wroteAll when all went out; wrotePart when a tail
// is left (or the write failed), for a writer that may wait to send it; and
// wroteNone, having taken nothing, when another write holds the connection
// (the frames are still the caller's).
func (c *corkConn) tryWriteFrames(frames [][]byte) writeOutcome {
	if !c.mu.TryLock() {
		return wroteNone
	}
	defer c.mu.Unlock()
	c.corked = false
	buf := c.buf
	if buf == nil {
		buf = (*batchBuffers.Get().(*[]byte))[:0]
	}
	c.buf = nil
	buf = append(buf, c.tail...)
	for _, f := range frames {
		buf = wsframe.AppendText(buf, f)
	}
	if c.closeSent {
		// No data frame may follow the close frame; the writer's next
		// write reports it.
		c.tail = nil
		return wrotePart
	}
	n := 0
	if c.fd >= 0 {
		n = c.writeNow(buf)
	}
	if n < len(buf) {
		// The tail keeps the batch buffer; it is garbage once sent.
		c.tail = buf[n:]
		return wrotePart
	}
	c.tail = nil
	if cap(buf) <= 2*corkFlushAt {
		b := buf[:0]
		batchBuffers.Put(&b)
	}
	return wroteAll
}

// tailPending reports whether part of a frame may wait to be sent: a tail
// is left, or another write holds the connection and may leave one.
func (c *corkConn) tailPending() bool {
	if !c.mu.TryLock() {
		return true
	}
	defer c.mu.Unlock()
	return len(c.tail) > 0
}

// writeNow writes p to the socket if it takes the bytes at once and returns
// how many it took; 0 when it would wait, the write failed or the
// connection is closed (the writer that then sends the rest reports the
// failure). The socket is non-blocking, as the net package keeps it.
func (c *corkConn) writeNow(p []byte) int {
	c.fdMu.RLock()
	defer c.fdMu.RUnlock()
	if c.fdClosed {
		return 0
	}
	if len(p) == 0 {
		return 0
	}
	for {
		n, errno := sendNow(c.fd, p)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno != 0:
			return 0
		}
		return n
	}
}

// Close closes the connection once no write of writeNow is in progress,
// and keeps any from starting: the descriptor's number may be reused by
// the next connection accepted.
func (c *corkConn) Close() error {
	c.fdMu.Lock()
	c.fdClosed = true
	c.fdMu.Unlock()
	return c.Conn.Close()
}

// flushTail sends the tail that a write that could not wait left, if any.
func (c *corkConn) flushTail() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushTailLocked()
}

func (c *corkConn) flushTailLocked() error {
	if len(c.tail) == 0 {
		return nil
	}
	if _, err := c.writeLocked(c.tail); err != nil {
		return fmt.Errorf("write the rest of a frame: %w", err)
	}
	c.tail = nil
	return nil
}

// writeLocked writes to the socket. Once a session watches the connection
// (watch), the write is marked as in progress, and the broker's
// watchdog closes the connection when it takes longer than the write
// timeout (see Broker.watchWrites): no write (a control frame to a client
// that stopped reading, say) can hold the socket, and the WebSocket
// library's lock, for ever.
func (c *corkConn) writeLocked(p []byte) (int, error) {
	if c.watched {
		c.writingSince.Store(time.Now().UnixNano())
		defer c.writingSince.Store(0)
	}
	return c.Conn.Write(p)
}

// stalled tells whether a write has been in progress for longer than d.
func (c *corkConn) stalled(now time.Time, d time.Duration) bool {
	since := c.writingSince.Load()
	return since != 0 && now.UnixNano()-since > int64(d)
}

// isFramed tells whether the broker frames this connection's data frames.
func (c *corkConn) isFramed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.framed
}

// canWriteNow tells whether the connection is framed and has a socket to
// write to without waiting (tryWrite, tryWriteFrames).
func (c *corkConn) canWriteNow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.framed && c.fd >= 0
}

// watch puts the socket writes under the broker's watchdog.
func (c *corkConn) watch() {
	c.mu.Lock()
	c.watched = true
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

// uncork sends the batch in one write.
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
func (c *corkConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.unread == nil && c.readErr == nil {
		if len(p) >= readBufferSize || len(p) == 0 || !c.rawReady() {
			return c.Conn.Read(p)
		}
		c.fill()
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

// fill waits until the socket is readable, then reads what it holds into a
// pooled buffer, or records why it could not. c.rmu is held.
func (c *corkConn) fill() {
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

// readOnce is fill's callback: one read of the socket into a pooled buffer,
// which becomes c.pending when it took something. It returns false to have
// the runtime wait until the socket is readable. c.rmu is held.
func (c *corkConn) readOnce(fd uintptr) bool {
	buf := readBuffers.Get().(*[]byte)
	var (
		n   int
		err error
	)
	for {
		n, err = readFD(fd, *buf)
		if err != syscall.EINTR {
			break
		}
	}
	c.got, c.gotErr = n, nil
	if n > 0 {
		c.pending = buf
		return true
	}
	readBuffers.Put(buf)
	if err == syscall.EAGAIN { // nothing yet
		return false
	}
	c.gotErr = err
	return true
}

// awaitInput returns once the client has sent something that the session's
// next read will find, or the connection failed (which that read then
// reports). The session calls it before each read so that an idle client
// waits here, a few frames deep, rather than deep inside the WebSocket
// library: the garbage collector then shrinks the goroutine's stack to the
// smallest size, and new sessions start with it. Without a reader made by
// leanWriter it returns at once.
func (c *corkConn) awaitInput() {
	c.brMu.Lock()
	skip := c.br == nil || c.handed || c.br.Buffered() > 0
	c.brMu.Unlock()
	if skip {
		return
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.unread == nil && c.readErr == nil && c.rawReady() {
		c.fill()
	}
}

// handOverReads tells awaitInput to leave the library's reader alone from
// now on: the writer is about to run the close handshake, in which the
// library reads from the writer's goroutine.
func (c *corkConn) handOverReads() {
	c.brMu.Lock()
	c.handed = true
	c.brMu.Unlock()
}

// rawReady finds the file descriptor that small reads go to, once.
func (c *corkConn) rawReady() bool {
	if c.raw != nil || c.noRaw {
		return c.raw != nil
	}
	c.raw = rawConn(c.Conn)
	c.noRaw = c.raw == nil
	if c.raw != nil {
		c.readFn = c.readOnce
	}
	return c.raw != nil
}

// leanWriter gives the WebSocket library small buffers for a plain
// connection accepted through Listen. The library would keep the HTTP
// server's 4 KiB reader and a new 4 KiB writer for as long as the
// connection lives; most connections are idle most of the time.
//
//   - The reader needs only a few bytes: a frame header is read through
//     them, and a payload larger than the buffer is read past it straight
//     into the message. The bytes behind them come from corkConn.Read,
//     which holds a buffer only while the socket has data.
//   - The writer holds a whole control frame (2 + 125 bytes), so that a
//     pong or a close frame leaves in one write. Data frames do not go
//     through the library at all (corkConn.framed).
//
// Under TLS the hijacked connection is the TLS one, which buffers on its
// own: the library's buffers are left as they are.
type leanWriter struct {
	http.ResponseWriter
	conn *corkConn
}

const (
	leanReadBuffer  = 16  // bufio's smallest
	leanWriteBuffer = 128 // a control frame: 2 header bytes, 125 of payload
)

// Hijack takes the connection over from the HTTP server.
func (w leanWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil || conn != net.Conn(w.conn) {
		return conn, brw, err
	}
	r := brw.Reader
	if r.Buffered() == 0 {
		// Bytes that came behind the request would be in the server's
		// reader; a client waits for the 101, so there are none.
		r = bufio.NewReaderSize(conn, leanReadBuffer)
	}
	w.conn.brMu.Lock()
	w.conn.br = r
	w.conn.brMu.Unlock()
	w.conn.mu.Lock()
	w.conn.framed = true
	w.conn.takeFD()
	w.conn.mu.Unlock()
	return conn, bufio.NewReadWriter(r, bufio.NewWriterSize(conn, leanWriteBuffer)), nil
}

// takeFD sets fd to the socket's descriptor, or -1 when the connection has
// none; called with mu held.
func (c *corkConn) takeFD() {
	c.fd = -1
	if raw := rawConn(c.Conn); raw != nil {
		_ = raw.Control(func(fd uintptr) { c.fd = int(fd) })
	}
}

// rawConn returns the descriptor access of conn, nil when it has none or
// this system's sockets are not plain descriptors (rawSockets).
func rawConn(conn net.Conn) syscall.RawConn {
	sc, ok := conn.(syscall.Conn)
	if !ok || !rawSockets {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w leanWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withLeanBuffers wraps w so that a WebSocket upgrade over cc gets small
// buffers; without a corkable connection it returns w.
func withLeanBuffers(w http.ResponseWriter, cc *corkConn) http.ResponseWriter {
	if cc == nil {
		return w
	}
	return leanWriter{ResponseWriter: w, conn: cc}
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
	return &corkConn{Conn: c, fd: -1}, nil
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
