package wsconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/protocol"
)

// Options describe the connections Accept makes.
type Options struct {
	// ReadLimit bounds a frame from the client; a larger one closes the
	// connection with 1009.
	ReadLimit int64
	// WriteTimeout bounds a write of a connection that did not come
	// through Listen (the others are bounded by the broker's watchdog,
	// see Conn.Stalled), within the lifetime Context.
	WriteTimeout time.Duration
	Context      context.Context
}

// Conn is one client's WebSocket connection. Its writes are made by one
// writer at a time (the broker's session sees to that), its reads by one
// reader.
type Conn struct {
	ws  *websocket.Conn
	nc  *netConn    // nil when the connection did not come through Listen
	bw  batchWriter // how a batch is written, chosen once by Accept
	opt *Options    // the broker's, shared by every connection
}

// Accept upgrades the request to a WebSocket. The 101 response is held
// back so that it leaves in one write with the first frame; whatever
// follows (the first write, or Close of a refused client) sends it. The
// origin policy is the caller's, so that a refused browser learns why from
// a close code rather than a bare 403.
func Accept(w http.ResponseWriter, r *http.Request, opt *Options) (*Conn, error) {
	nc := netConnFrom(r.Context())
	if nc != nil {
		nc.cork()
		w = leanWriter{ResponseWriter: w, conn: nc}
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		if nc != nil {
			_ = nc.uncork()
		}
		return nil, fmt.Errorf("websocket upgrade: %w", err)
	}
	ws.SetReadLimit(opt.ReadLimit)
	c := &Conn{ws: ws, nc: nc, opt: opt, bw: libraryWrites{}}
	if nc != nil {
		nc.mu.Lock()
		framed := nc.framed
		nc.mu.Unlock()
		if framed {
			c.bw = framedWrites{}
		} else {
			c.bw = corkedWrites{}
		}
	}
	return c, nil
}

// InlineWriter returns the connection's writer that never waits, or nil
// when it has none: only a plain connection through Listen, on a system
// whose sockets are descriptors, can be written to without waiting.
func (c *Conn) InlineWriter() *InlineWriter {
	if c.nc == nil {
		return nil
	}
	c.nc.mu.Lock()
	defer c.nc.mu.Unlock()
	if !c.nc.framed || c.nc.fd < 0 {
		return nil
	}
	return (*InlineWriter)(c.nc)
}

// InlineWriter writes to a connection without ever waiting. It is the
// socket itself, so that a fan-out that reaches it through an interface
// finds the socket's state with no other object between.
type InlineWriter netConn

// Next waits for the client's next frame and returns a reader of its
// payload; text is false for a binary frame. The error that ended the
// connection tells its close code and reason through CloseStatus.
//
// The wait has no context: a context that can end makes the library
// register a callback on it for every read. The connection is closed
// instead when the session must end early.
func (c *Conn) Next() (text bool, r io.Reader, err error) {
	if c.nc != nil {
		c.nc.awaitInput()
	}
	typ, r, err := c.ws.Reader(context.Background())
	return typ == websocket.MessageText, r, err
}

// Discard drops the client's data frames from now on, without the
// WebSocket library, and reads at most budget bytes of them: Next then
// returns only at the client's close frame (the library answers its pings
// meanwhile) or the end of the connection, which is an error once the
// client sent more than budget. A closing session calls it, since it would
// throw the frames away. It returns false when the connection cannot see
// where its frames begin (TLS, or one that did not come through Listen):
// Next then returns the data frames as before.
func (c *Conn) Discard(budget int) bool {
	return c.nc != nil && c.nc.discardFrames(budget)
}

// CloseStatus turns the error that ended a read into the close code and
// reason that the client gave, or that tell what ended the connection.
func CloseStatus(err error) (int, string) {
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return int(ce.Code), ce.Reason
	case errors.Is(err, websocket.ErrMessageTooBig):
		return protocol.CloseTooBig, "message too big"
	}
	return protocol.CloseAbnormal, "connection lost"
}

// WriteMany writes frames, in order, after whatever a write that could not
// wait left; it waits for the socket as long as the write timeout allows.
func (c *Conn) WriteMany(frames [][]byte) error { return c.bw.writeMany(c, frames) }

// TryWrite writes frame, a text frame as wsframe.AppendText makes it, if
// the socket takes it without waiting: took is false when nothing was
// written, tail true when the socket took part and the rest waits to be
// sent (Flush, or the next write).
func (w *InlineWriter) TryWrite(frame []byte) (took, tail bool) { return (*netConn)(w).tryWrite(frame) }

// TryWriteMany writes frames as WriteMany does, without waiting: took is
// false when another write holds the connection and nothing was taken;
// tail true when part waits to be sent.
func (w *InlineWriter) TryWriteMany(frames [][]byte) (took, tail bool) {
	return (*netConn)(w).tryWriteFrames(frames)
}

// Pending tells whether part of a write may wait to be sent.
func (w *InlineWriter) Pending() bool { return (*netConn)(w).tailPending() }

// Warm reads the descriptor, which is set before the writer is handed out
// and never changes, so that the socket's state is in the cache for the
// TryWrite that follows.
func (w *InlineWriter) Warm() int { return w.fd }

// Flush sends what a write that could not wait left, waiting for the
// socket.
func (c *Conn) Flush() error {
	if c.nc == nil {
		return nil
	}
	return c.nc.flushTail()
}

// Close sends the close frame with code and reason after what was written
// and waits for the client's, closeWait at most (the library alone would
// wait 5 s), reading closeReadBytes at most meanwhile; the reader then
// sees the end. A client that does not answer, a refused flood or a slow
// consumer, holds its connection no longer, and one that filled its socket
// with frames costs no more than a quarter megabyte of reading.
func (c *Conn) Close(code int, reason string) error {
	if c.nc != nil {
		c.nc.handOverReads()
		c.nc.boundCloseReads()
		// The handshake throws data frames away: the library never sees them.
		c.nc.discardFrames(closeReadBytes)
		_ = c.nc.uncork() // a refused client's 101 response goes first
		_ = c.nc.SetDeadline(time.Now().Add(closeWait))
	}
	return c.ws.Close(websocket.StatusCode(code), protocol.TruncateReason(reason))
}

// closeWait bounds a close handshake: time enough for a client that reads
// to answer, little for one that does not.
const closeWait = 2 * time.Second

// CloseNow drops the connection without a close handshake; a write in
// progress fails. The socket is closed first: the library's CloseNow
// waits for a close handshake in progress, which a client that stopped
// reading would hold up for seconds.
func (c *Conn) CloseNow() error {
	if c.nc != nil {
		_ = c.nc.Close()
	}
	return c.ws.CloseNow()
}

// DropIfStalled closes the socket if a write has been in progress for
// longer than write, or a frame has been arriving for longer than frame,
// so that the write or the read fails; true if it did. It closes the
// socket rather than the library's connection, whose close would wait for
// a close handshake that the stalled write may hold up. A connection that
// did not come through Listen bounds its writes itself, and its reads not
// at all.
func (c *Conn) DropIfStalled(now time.Time, write, frame time.Duration) bool {
	if c.nc == nil || !c.nc.stalled(now, write) && !since(&c.nc.frameSince, now, frame) {
		return false
	}
	_ = c.nc.Close()
	return true
}

// A batchWriter writes a batch of frames the way its kind of connection
// allows; Accept picks one for each connection.
type batchWriter interface {
	writeMany(c *Conn, frames [][]byte) error
}

// framedWrites: DMB frames the batch itself, one socket write.
type framedWrites struct{}

func (framedWrites) writeMany(c *Conn, frames [][]byte) error { return c.nc.writeFrames(frames) }

// corkedWrites: under TLS the library frames and encrypts each frame; the
// socket beneath is corked around the batch so that it still leaves in one
// write. A context without a deadline spares the library a timer per
// frame: the one socket write is uncork's, bounded by the watchdog.
type corkedWrites struct{}

func (corkedWrites) writeMany(c *Conn, frames [][]byte) error {
	if len(frames) == 0 {
		return nil
	}
	ctx := context.Background()
	c.nc.cork()
	for _, f := range frames {
		if err := c.ws.Write(ctx, websocket.MessageText, f); err != nil {
			_ = c.nc.uncork()
			return err
		}
		if c.nc.buffered() >= flushAt {
			if err := c.nc.uncork(); err != nil {
				return err
			}
			c.nc.cork()
		}
	}
	return c.nc.uncork()
}

// libraryWrites: a connection that did not come through Listen; each frame
// is written by the library within the write timeout.
type libraryWrites struct{}

func (libraryWrites) writeMany(c *Conn, frames [][]byte) error {
	if len(frames) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.opt.Context, c.opt.WriteTimeout)
	defer cancel()
	for _, f := range frames {
		if err := c.ws.Write(ctx, websocket.MessageText, f); err != nil {
			return err
		}
	}
	return nil
}

// leanWriter gives the WebSocket library small buffers for a connection
// accepted through Listen. The library would keep the HTTP server's 4 KiB
// reader and a new 4 KiB writer for as long as the connection lives; most
// connections are idle most of the time.
//
//   - The reader needs only a few bytes: a frame header is read through
//     them, and a payload larger than the buffer is read past it straight
//     into the message. The bytes behind them come from netConn.Read,
//     which holds a buffer only while the socket has data.
//   - The writer holds a whole control frame (2 + 125 bytes), so that a
//     pong or a close frame leaves in one write. Data frames do not go
//     through the library at all (framedWrites).
//
// Under TLS the hijacked connection is the TLS one, which buffers on its
// own: the library's buffers are left as they are.
type leanWriter struct {
	http.ResponseWriter
	conn *netConn
}

const (
	leanReadBuffer  = 16  // bufio's smallest
	leanWriteBuffer = 128 // a control frame: 2 header bytes, 125 of payload
)

// Hijack takes the connection over from the HTTP server.
func (w leanWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.conn.hijacked.Store(true)
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
	// From now on every byte the library reads is the client's frames,
	// unless the server's reader held some already.
	w.conn.rmu.Lock()
	w.conn.frames.on = r != brw.Reader
	w.conn.canDiscard.Store(w.conn.frames.on)
	w.conn.rmu.Unlock()
	w.conn.mu.Lock()
	w.conn.framed = true
	w.conn.takeFDLocked()
	w.conn.mu.Unlock()
	return conn, bufio.NewReadWriter(r, bufio.NewWriterSize(conn, leanWriteBuffer)), nil
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w leanWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// takeFDLocked sets fd to the socket's descriptor, or -1 when the
// connection has none or this system's sockets are not plain descriptors.
// mu must be held.
func (c *netConn) takeFDLocked() {
	c.fd = -1
	if !rawSockets {
		return
	}
	if raw := rawConn(c.Conn); raw != nil {
		_ = raw.Control(func(fd uintptr) { c.fd = int(fd) })
	}
}
