package broker

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/internal/readall"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// client is one WebSocket session. The session goroutine reads; a writer
// goroutine, which exists only while the send queue holds something (see
// sendQueue), owns every write. run waits for the last writer.
//
// An idle client is kept small on purpose: one blocked goroutine, no
// context, timer or logger of its own; what it logs carries its cid and
// service through log.
type client struct {
	b       *Broker
	cid     string
	service string
	remote  string
	user    string

	// A fan-out reads direct, wire and q of every client, whose memory is
	// then seldom in the cache: they sit together, q inline.
	direct  bool      // the client may be written to without waiting (wire.fd)
	framed  bool      // the broker frames data frames itself (wire.framed)
	wire    *corkConn // nil when the connection did not come through Listen
	q       sendQueue
	conn    *websocket.Conn
	writers sync.WaitGroup // the running writer, if any

	errs errorWindow // reader only

	// fwdMu orders passing a frame to the uplink against stopForwarding, so
	// that no frame is passed on after the shutdown barrier.
	fwdMu      sync.Mutex
	forwarding bool
}

func newClient(b *Broker, conn *websocket.Conn, wire *corkConn, service, remote, user string) *client {
	if wire != nil {
		wire.watch()
	}
	c := &client{
		b:       b,
		cid:     newCID(),
		service: service,
		remote:  remote,
		user:    user,
		conn:    conn,
		wire:    wire,
		framed:  wire != nil && wire.isFramed(),
		direct:  wire != nil && wire.canWriteNow(),

		forwarding: true,
	}
	c.q.init(b.cfg.SendQueue, c.startWriter)
	return c
}

// log logs msg with the client's cid and service. The attributes are
// joined only when the level is on: a logger per client would cost every
// idle connection a few hundred bytes.
func (c *client) log(level slog.Level, msg string, args ...any) {
	ctx := context.Background()
	if c.b.log.Enabled(ctx, level) {
		c.b.log.With("cid", c.cid, "service", c.service).Log(ctx, level, msg, args...)
	}
}

// stopForwarding makes the client answer what it sends from now on with
// "broker unavailable" instead of passing it on: the node is going away,
// and the client sends it again to the node it reconnects to.
func (c *client) stopForwarding() {
	c.fwdMu.Lock()
	c.forwarding = false
	c.fwdMu.Unlock()
}

// forward passes a frame to the uplink unless forwarding stopped.
func (c *client) forward(frame protocol.ClientFrame) error {
	c.fwdMu.Lock()
	defer c.fwdMu.Unlock()
	if !c.forwarding {
		c.b.m.Drops.WithLabelValues(metrics.DropShuttingDown).Inc()
		if frame.ID != nil {
			c.send(protocol.AppendError(nil, frame.ID, protocol.ErrTextBrokerUnavailable))
		}
		return nil
	}
	// A full uplink queue holds the reader back until the broker's lifetime
	// ends: the session itself ends only when its reader returns.
	return c.b.up.Message(c.b.ctx, c, frame.Data, frame.ID)
}

// CID, Service, Remote and User describe the client to the uplink.
func (c *client) CID() string     { return c.cid }
func (c *client) Service() string { return c.service }
func (c *client) Remote() string  { return c.remote }
func (c *client) User() string    { return c.user }

// Send queues a frame for the client; it is how the uplink answers.
func (c *client) Send(frame []byte) { c.send(frame) }

func (c *client) send(frame []byte) bool {
	switch c.q.push(frame) {
	case pushed:
		return true
	case overflow:
		c.b.m.Drops.WithLabelValues(metrics.DropSlowConsumer).Inc()
		c.log(slog.LevelInfo, "slow consumer: closing")
	}
	return false
}

// sendFramed is send for a frame shared by many clients, given both as
// payload and as the text frame built once from it (wsframe.AppendText). A
// client of a plain connection whose queue is empty and that has no writer
// gets the frame written to its socket at once, if the socket takes it
// without waiting; otherwise the payload is queued as by send.
func (c *client) sendFramed(payload, frame []byte) bool {
	if !c.direct || !c.q.claim() {
		return c.send(payload)
	}
	switch c.wire.tryWrite(frame) {
	case wroteAll:
		c.q.release(false)
		return true
	case wrotePart:
		c.q.release(true) // the writer sends the tail first
		return true
	}
	c.q.release(false)
	return c.send(payload)
}

// run serves the session until it ends, then tells the backend.
func (c *client) run() {
	c.log(slog.LevelInfo, "client connected", "remote", c.remote)
	c.conn.SetReadLimit(c.b.cfg.MaxMessageBytes)
	if err := c.b.up.Connect(c); err != nil {
		c.log(slog.LevelWarn, "client_connected not queued", "err", err)
	}

	code, reason := c.readLoop()

	c.b.remove(c)
	c.q.stop()
	_ = c.conn.CloseNow() // ends a writer that is still writing
	c.writers.Wait()
	if req := c.q.closeRequest(); req != nil {
		code, reason = req.code, req.reason
	}
	c.b.m.Disconnected(code)
	c.log(slog.LevelInfo, "client disconnected", "code", code, "reason", reason)
	if err := c.b.up.Disconnect(c, code, reason); err != nil {
		c.log(slog.LevelWarn, "client_disconnected not queued", "err", err)
	}
}

// readLoop reads frames until the connection ends and returns the close code
// and reason the client gave, or what ended the connection.
//
// The read has no context: a context that can end makes the library
// register a callback on it for every read. The connection is closed
// instead when the session must end early (see Broker.Shutdown).
func (c *client) readLoop() (int, string) {
	for {
		if c.wire != nil {
			c.wire.awaitInput()
		}
		typ, r, err := c.conn.Reader(context.Background())
		if err != nil {
			return closeStatus(err)
		}
		buf := frameBuffers.Get().(*[]byte)
		*buf, err = readall.Into((*buf)[:0], r)
		var stop error
		if err == nil && c.q.closeRequest() == nil { // closing: read on until the close handshake ends
			c.b.messagesIn.Inc()
			if typ != websocket.MessageText {
				c.close(protocol.CloseUnsupported, "binary frames are not supported")
			} else {
				stop = c.handle(*buf)
			}
		}
		if cap(*buf) <= maxPooledFrame {
			frameBuffers.Put(buf)
		}
		if err != nil {
			return closeStatus(err)
		}
		if stop != nil {
			return protocol.CloseGoingAway, "server shutting down"
		}
	}
}

// frameBuffers lends the readers a buffer for the frame at hand: the uplink
// copies what it keeps, so a frame costs no allocation of its own.
var frameBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}

// maxPooledFrame bounds the buffers frameBuffers keeps: a rare large frame
// should not hold its memory for ever.
const maxPooledFrame = 64 << 10

// handle passes one text frame on. A panic here is a bug in DMB; it costs
// this client its connection (1011), never the node.
func (c *client) handle(data []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.log(slog.LevelError, "panic handling a client frame", "panic", p, "stack", string(debug.Stack()))
			c.close(protocol.CloseInternal, "internal error")
		}
	}()
	frame, err := protocol.DecodeClientFrame(data)
	if err != nil {
		c.badFrame(err)
		return nil
	}
	return c.forward(frame)
}

// badFrame answers a frame DMB refuses, and closes the client with 1008 when
// it sends too many.
func (c *client) badFrame(err error) {
	c.b.m.Drops.WithLabelValues(metrics.DropClientError).Inc()
	var fe *protocol.FrameError
	var id []byte
	if errors.As(err, &fe) {
		id = fe.ID
	}
	c.send(protocol.AppendError(nil, id, err.Error()))
	c.b.m.MessagesOut.WithLabelValues(metrics.KindError).Inc()
	if c.errs.add(time.Now(), c.b.cfg.ClientErrorLimit) {
		c.close(protocol.ClosePolicy, "too many bad frames")
	}
}

// close asks the writer to close the connection after what is queued, so
// that the client reads the error that led to the close.
func (c *client) close(code int, reason string) {
	c.q.close(closeReq{code: code, reason: reason, flush: true})
}

// startWriter starts a writer; the send queue calls it, with its lock held,
// when a frame or a close request finds no writer running. On a plain
// connection the writer is first one of the broker's flushers (see
// flushReady); a writer goroutine of the client's own takes over only when
// the socket would make it wait.
func (c *client) startWriter() {
	c.writers.Add(1)
	if c.direct && c.b.flushLater(c) {
		return
	}
	c.goWrite(nil, nil)
}

// goWrite runs the rest of a writer on a goroutine of its own: frames and
// req, taken from the queue already, then writeLoop.
func (c *client) goWrite(frames [][]byte, req *closeReq) {
	go func() {
		defer c.writers.Done()
		defer c.recoverWriter()
		if c.writeTaken(frames, req) {
			c.writeLoop()
		}
	}()
}

// recoverWriter turns a panic in a writer into the end of the client's
// connection, not of the node.
func (c *client) recoverWriter() {
	if p := recover(); p != nil {
		c.log(slog.LevelError, "panic in client writer", "panic", p, "stack", string(debug.Stack()))
		c.q.stop()
		_ = c.conn.CloseNow()
	}
}

// flushReady is a writer run by one of the broker's flushers: it writes
// what is queued without ever waiting for the socket, so that one flusher
// serves many clients in turn. When the socket does not take everything,
// or DMB closes the client (the close handshake waits), the rest goes to
// a writer goroutine of the client's own.
func (c *client) flushReady() {
	handedOver := false
	defer func() {
		if !handedOver {
			c.writers.Done()
		}
	}()
	defer c.recoverWriter()
	// A direct write that the socket took only part of started this
	// writer (release(true)) with nothing queued: its tail goes first.
	if c.wire.tailPending() && c.wire.tryWriteFrames(nil) != wroteAll {
		handedOver = true
		c.goWrite(nil, nil) // writeLoop sends the tail first
		return
	}
	for {
		frames, req, done := c.q.take()
		switch {
		case done:
			return
		case req != nil:
			handedOver = true
			c.goWrite(frames, req)
			return
		}
		c.b.m.WriteBatch.Observe(float64(len(frames)))
		switch c.wire.tryWriteFrames(frames) {
		case wrotePart:
			handedOver = true
			c.goWrite(nil, nil) // the tail goes first
			return
		case wroteNone:
			// Another write holds the connection (the library answering
			// a ping or a close into a full socket): wait for it on a
			// goroutine of the client's own, not on the flusher.
			handedOver = true
			c.goWrite(frames, nil)
			return
		}
		c.q.recycle(frames)
	}
}

// writeLoop writes queued frames until the queue is empty, the connection
// fails, or DMB closes it.
func (c *client) writeLoop() {
	if c.framed {
		// What a write that could not wait left goes first.
		if err := c.wire.flushTail(); err != nil {
			c.writeFailed(err)
			return
		}
	}
	for {
		frames, req, done := c.q.take()
		if done || !c.writeTaken(frames, req) {
			return
		}
	}
}

// writeTaken writes frames taken from the queue, then closes the
// connection if req asks for it; true if the writer goes on.
func (c *client) writeTaken(frames [][]byte, req *closeReq) bool {
	if len(frames) > 0 {
		c.b.m.WriteBatch.Observe(float64(len(frames)))
		if err := c.write(frames); err != nil {
			c.writeFailed(err)
			return false
		}
		c.q.recycle(frames)
	}
	if req != nil {
		if c.wire != nil {
			c.wire.handOverReads()
		}
		// Close sends the close frame and waits (5 s at most) for the
		// client's; the reader sees the end and finishes the session.
		_ = c.conn.Close(websocket.StatusCode(req.code), protocol.TruncateReason(req.reason))
		return false
	}
	return true
}

// writeFailed ends the session's writes after a failed one: the reader
// then finds the connection closed.
func (c *client) writeFailed(err error) {
	c.log(slog.LevelDebug, "write failed", "err", err)
	c.q.stop()
	_ = c.conn.CloseNow()
}

// write sends a batch of frames, in one socket write when the connection is
// corkable.
func (c *client) write(frames [][]byte) error {
	if c.framed {
		return c.wire.writeFrames(frames)
	}
	if c.wire == nil {
		ctx, cancel := context.WithTimeout(c.b.ctx, c.b.cfg.WriteTimeout)
		defer cancel()
		for _, f := range frames {
			if err := c.conn.Write(ctx, websocket.MessageText, f); err != nil {
				return err
			}
		}
		return nil
	}
	// Corked, the library's writes only fill the batch; the one socket write
	// is uncork's, bounded by DMB_WRITE_TIMEOUT through the broker's
	// watchdog (as is every other write to the socket, see watchWrites). A
	// context without a deadline spares the library a timer per frame.
	ctx := context.Background()
	c.wire.cork()
	for _, f := range frames {
		if err := c.conn.Write(ctx, websocket.MessageText, f); err != nil {
			_ = c.wire.uncork()
			return err
		}
		if c.wire.buffered() >= corkFlushAt {
			if err := c.wire.uncork(); err != nil {
				return err
			}
			c.wire.cork()
		}
	}
	return c.wire.uncork()
}

// closeStatus turns the error that ended a read into the code and reason
// reported in client_disconnected.
func closeStatus(err error) (int, string) {
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return int(ce.Code), ce.Reason
	case errors.Is(err, websocket.ErrMessageTooBig):
		return protocol.CloseTooBig, "message too big"
	}
	return protocol.CloseAbnormal, "connection lost"
}
