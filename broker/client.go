package broker

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// client is one WebSocket session. The handler goroutine reads; one writer
// goroutine, started and waited for by run, owns every write.
type client struct {
	b       *Broker
	cid     string
	service string
	remote  string
	user    string
	log     *slog.Logger

	conn *websocket.Conn
	wire *corkConn // nil when the connection did not come through Listen
	q    *sendQueue

	ctx    context.Context // ends when the session ends
	cancel context.CancelFunc

	errs errorWindow // reader only

	// fwdMu orders passing a frame to the uplink against stopForwarding, so
	// that no frame is passed on after the shutdown barrier.
	fwdMu      sync.Mutex
	forwarding bool
}

func newClient(b *Broker, conn *websocket.Conn, wire *corkConn, service, remote, user string) *client {
	ctx, cancel := context.WithCancel(b.ctx)
	if wire != nil {
		wire.setTimeout(b.cfg.WriteTimeout)
	}
	cid := newCID()
	return &client{
		b:       b,
		cid:     cid,
		service: service,
		remote:  remote,
		user:    user,
		log:     b.log.With("cid", cid, "service", service),
		conn:    conn,
		wire:    wire,
		q:       newSendQueue(b.cfg.SendQueue),
		ctx:     ctx,
		cancel:  cancel,

		forwarding: true,
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
	return c.b.up.Message(c.ctx, c, frame.Data, frame.ID)
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
		c.log.Info("slow consumer: closing")
	}
	return false
}

// run serves the session until it ends, then tells the backend.
func (c *client) run() {
	c.log.Info("client connected", "remote", c.remote)
	c.conn.SetReadLimit(c.b.cfg.MaxMessageBytes)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		defer func() {
			if p := recover(); p != nil {
				c.log.Error("panic in client writer", "panic", p, "stack", string(debug.Stack()))
				_ = c.conn.CloseNow()
			}
		}()
		c.writeLoop()
	}()
	if err := c.b.up.Connect(c); err != nil {
		c.log.Warn("client_connected not queued", "err", err)
	}

	code, reason := c.readLoop()

	c.b.remove(c)
	c.cancel()
	<-writerDone
	if req := c.q.closeRequest(); req != nil {
		code, reason = req.code, req.reason
	}
	c.b.m.Disconnected(code)
	c.log.Info("client disconnected", "code", code, "reason", reason)
	if err := c.b.up.Disconnect(c, code, reason); err != nil {
		c.log.Warn("client_disconnected not queued", "err", err)
	}
}

// readLoop reads frames until the connection ends and returns the close code
// and reason the client gave, or what ended the connection.
func (c *client) readLoop() (int, string) {
	for {
		typ, data, err := c.conn.Read(c.ctx)
		if err != nil {
			return closeStatus(err)
		}
		if c.q.closeRequest() != nil {
			continue // closing: read on until the close handshake ends
		}
		c.b.m.MessagesIn.WithLabelValues(metrics.KindMessage).Inc()
		if typ != websocket.MessageText {
			c.close(protocol.CloseUnsupported, "binary frames are not supported")
			continue
		}
		if err := c.handle(data); err != nil {
			return protocol.CloseGoingAway, "server shutting down"
		}
	}
}

// handle passes one text frame on. A panic here is a bug in DMB; it costs
// this client its connection (1011), never the node.
func (c *client) handle(data []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("panic handling a client frame", "panic", p, "stack", string(debug.Stack()))
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

// writeLoop writes queued frames until the session ends or DMB closes it.
func (c *client) writeLoop() {
	for {
		select {
		case <-c.q.wake:
		case <-c.ctx.Done():
			_ = c.conn.CloseNow()
			return
		}
		frames, req := c.q.take()
		if len(frames) > 0 {
			c.b.m.WriteBatch.Observe(float64(len(frames)))
			if err := c.write(frames); err != nil {
				c.log.Debug("write failed", "err", err)
				_ = c.conn.CloseNow()
				return
			}
			c.q.recycle(frames)
		}
		if req != nil {
			// Close sends the close frame and waits (5 s at most) for the
			// client's; the reader sees the end and finishes the session.
			_ = c.conn.Close(websocket.StatusCode(req.code), protocol.TruncateReason(req.reason))
			return
		}
	}
}

// write sends a batch of frames, in one socket write when the connection is
// corkable.
func (c *client) write(frames [][]byte) error {
	if c.wire == nil {
		ctx, cancel := context.WithTimeout(c.ctx, c.b.cfg.WriteTimeout)
		defer cancel()
		for _, f := range frames {
			if err := c.conn.Write(ctx, websocket.MessageText, f); err != nil {
				return err
			}
		}
		return nil
	}
	// Corked, the library's writes only fill the batch; the one socket write
	// is uncork's, bounded by DMB_WRITE_TIMEOUT with a socket deadline (as
	// is every other write to the socket, see corkConn). A context without a
	// deadline spares the library a timer per frame.
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
