package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/dmb-broker/dmb/internal/linejson"
	"github.com/dmb-broker/dmb/internal/spread"
	"github.com/dmb-broker/dmb/protocol"
)

// TCP clients (docs/protocol.md, section 12): one JSON frame per line both
// ways, the frames of a WebSocket. The client's first line is a hello
// (tcphello.go), what a WebSocket client says in its URL; DMB answers with
// dmb:connected and ends a connection with a last line, dmb:close, which
// carries what a WebSocket's close frame would. A peer among the trusted
// proxies may open with a PROXY header (v1 or v2), which gives the
// client's address; any other peer that sends one is refused.
//
// The session does not know which transport it has: tcpConn is its
// Transport. Writes are bounded by the broker's watchdog, as a
// WebSocket's; so is a line the client began and does not finish.

// TCPOptions are what ServeTCP takes besides the broker's Config.
type TCPOptions struct {
	// HandshakeTimeout bounds what comes before the hello's answer: the
	// PROXY header, the TLS handshake and the hello line.
	HandshakeTimeout time.Duration
	// TLS, when set, makes clients speak TLS (after any PROXY header).
	TLS *tls.Config
}

// ServeTCP serves TCP clients from ln until ctx ends or ln fails. Then it
// closes ln, ends the connections that have not said hello yet (1001),
// waits for the handlers it started, and returns; the sessions go on
// until Shutdown ends them.
func (b *Broker) ServeTCP(ctx context.Context, ln net.Listener, o TCPOptions) error {
	h := &tcpHandshakes{conns: make(map[net.Conn]struct{})}
	stopped := make(chan struct{})
	var handlers sync.WaitGroup
	defer func() {
		close(stopped)
		h.stop()
		handlers.Wait()
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = ln.Close()
		case <-stopped:
		}
	}()
	delay := time.Duration(0)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors: wait a little, as net/http
				// does, rather than spin.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				b.log.Warn("tcp accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			_ = ln.Close()
			return err
		}
		delay = 0
		if !h.add(conn, time.Now().Add(spread.New().Of(o.HandshakeTimeout))) {
			_ = conn.Close()
			continue
		}
		handlers.Go(func() { b.serveTCPConn(conn, o, h) })
	}
}

// tcpHandshakes are the connections that have not said hello yet, which
// ServeTCP ends when it stops.
type tcpHandshakes struct {
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	stopped bool
}

// add bounds c's handshake by deadline, unless the handshakes stopped.
func (h *tcpHandshakes) add(c net.Conn, deadline time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return false
	}
	_ = c.SetDeadline(deadline) // before stop can cut it short
	h.conns[c] = struct{}{}
	return true
}

func (h *tcpHandshakes) remove(c net.Conn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// stop makes every handshake in progress fail at once.
func (h *tcpHandshakes) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for c := range h.conns {
		_ = c.SetReadDeadline(time.Now())
	}
}

func (h *tcpHandshakes) isStopped() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopped
}

// serveTCPConn reads a connection's PROXY header, TLS handshake and hello,
// within the deadline add set, and hands it to accept.
func (b *Broker) serveTCPConn(raw net.Conn, o TCPOptions, h *tcpHandshakes) {
	defer h.remove(raw)
	// Only a trusted proxy may say for whom it connects; another peer's
	// header fails the first read.
	policy := proxyproto.REJECT
	if isTrusted(peerAddr(raw.RemoteAddr()), b.cfg.TrustedProxies) {
		policy = proxyproto.USE
	}
	pc := proxyproto.NewConn(raw, proxyproto.WithPolicy(policy), proxyproto.SetReadHeaderTimeout(0))
	c := &tcpConn{raw: raw, rw: pc, w: raw, writeTimeout: b.cfg.WriteTimeout}
	if o.TLS != nil {
		tc := tls.Server(pc, o.TLS)
		if err := tc.Handshake(); err != nil {
			b.log.Debug("tcp tls handshake failed", "err", err, "remote", raw.RemoteAddr().String())
			_ = raw.Close()
			return
		}
		c.rw, c.w = tc, tc
	}
	c.lines = linejson.NewReader(c.rw, int(b.cfg.MaxMessageBytes))

	line, err := c.nextLine()
	remote := peerAddr(pc.RemoteAddr()).String()
	if err != nil {
		code, reason := helloFailure(err, h.isStopped())
		if code == 0 {
			_ = raw.Close() // the client left, or sent a PROXY header it may not
			return
		}
		b.refuse(c, "", remote, code, reason)
		return
	}
	service, hello, err := decodeHello(line)
	if err != nil {
		b.refuse(c, "", remote, protocol.ClosePolicy, err.Error())
		return
	}
	h.remove(raw) // Shutdown ends it from now on
	_ = raw.SetDeadline(time.Time{})
	b.accept(c, nil, service, remote, hello, c.readLines)
}

// helloFailure is the close code and reason for a connection whose hello
// did not come, 0 when it is closed without a word.
func helloFailure(err error, stopping bool) (int, string) {
	var ne net.Error
	switch {
	case stopping:
		return protocol.CloseGoingAway, "server shutting down"
	case errors.Is(err, linejson.ErrTooLong):
		return protocol.CloseTooBig, "message too big"
	case errors.As(err, &ne) && ne.Timeout():
		return protocol.ClosePolicy, "no hello in time"
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader), errors.Is(err, io.EOF):
		return 0, ""
	}
	return protocol.ClosePolicy, "bad input before the hello"
}

// peerAddr is the address of a connection's peer, unmapped; the zero
// address when it has none.
func peerAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}

// tcpConn carries one session's frames as lines.
type tcpConn struct {
	raw          net.Conn  // the TCP connection
	rw           net.Conn  // what lines are read from: raw behind a PROXY header, or TLS over it
	w            io.Writer // what lines are written to: raw, or TLS
	lines        *linejson.Reader
	writeTimeout time.Duration

	mu      sync.Mutex   // one write at a time
	writing atomic.Int64 // when the write in progress began (UnixNano), 0 if none
	reading atomic.Bool  // a session reads the lines: Close leaves the end of the reads to it
	closed  atomic.Bool  // the last line was written
}

// nextLine returns the next line that is not blank.
func (c *tcpConn) nextLine() ([]byte, error) {
	for {
		line, err := c.lines.Next()
		if err != nil || len(bytes.TrimSpace(line)) > 0 {
			return line, err
		}
	}
}

// readLines reads the client's lines and hands them to the session until
// the connection ends. A TCP client has no close code of its own: a
// connection that ends is a connection lost (1006), which the client may
// resume.
func (c *tcpConn) readLines(s *session) (int, string) {
	c.reading.Store(true)
	discarded := 0 // bytes read after the session began to close
	for {
		line, err := c.nextLine()
		switch {
		case errors.Is(err, linejson.ErrTooLong):
			if !s.closing() {
				s.b.messagesIn.Inc()
				s.close(protocol.CloseTooBig, "message too big")
			}
			continue
		case err != nil:
			return protocol.CloseAbnormal, "connection lost"
		case s.closing():
			// Read on until the client leaves after the last line, but not
			// for a client that floods on.
			if discarded += len(line); discarded > maxDiscarded {
				return protocol.CloseAbnormal, errFloodedWhileClosing.Error()
			}
			continue
		}
		if s.handle(line) != nil {
			return protocol.CloseGoingAway, "server shutting down"
		}
	}
}

// lineChunk is about how many bytes WriteMany hands the socket at a time.
const lineChunk = 64 << 10

// lineBuffers lend WriteMany the buffer it gathers lines in: an idle
// client holds none.
var lineBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// WriteMany writes frames, each a line, in as few writes as it can.
func (c *tcpConn) WriteMany(frames [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := lineBuffers.Get().(*[]byte)
	defer func() {
		// Empty, even after a failed write: what the buffer held was
		// this client's, and the next borrower is another's.
		if cap(*buf) <= maxPooledFrame {
			*buf = (*buf)[:0]
			lineBuffers.Put(buf)
		}
	}()
	for i, f := range frames {
		*buf = append(append(*buf, f...), '\n')
		if len(*buf) >= lineChunk || i == len(frames)-1 {
			if err := c.writeLocked(*buf); err != nil {
				return err
			}
			*buf = (*buf)[:0]
		}
	}
	return nil
}

// writeLocked writes p; the watchdog drops the connection when it takes
// longer than the write timeout. c.mu must be held.
func (c *tcpConn) writeLocked(p []byte) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	c.writing.Store(time.Now().UnixNano())
	defer c.writing.Store(0)
	_, err := c.w.Write(p)
	return err
}

// Flush has nothing to do: every write is sent whole.
func (c *tcpConn) Flush() error { return nil }

// closeLinger is how long DMB reads on after its last line, for the client
// to read it and leave: a socket closed with unread data in it is reset,
// and the reset may overtake the last line.
const closeLinger = time.Second

// Close writes the last line, dmb:close with code and reason, and ends
// DMB's side of the connection. The session's reader, when there is one,
// reads on until the client leaves or closeLinger passes; otherwise Close
// does it, and closes the connection.
func (c *tcpConn) Close(code int, reason string) error {
	c.mu.Lock()
	_ = c.raw.SetWriteDeadline(time.Now().Add(min(c.writeTimeout, closeLinger)))
	err := c.writeLocked(append(protocol.AppendClose(nil, code, reason), '\n'))
	c.closed.Store(true)
	c.mu.Unlock()
	if cw, ok := c.w.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.rw.SetReadDeadline(time.Now().Add(closeLinger))
	if c.reading.Load() {
		return err
	}
	// Read what the client sends until it leaves, at most maxDiscarded.
	_, _ = io.CopyN(io.Discard, c.rw, maxDiscarded)
	_ = c.raw.Close()
	return err
}

// CloseNow drops the connection; a write in progress fails.
func (c *tcpConn) CloseNow() error { return c.raw.Close() }

// DropIfStalled drops the connection when a write has been in progress for
// longer than write, or the client began a line more than frame ago and
// has not finished it.
func (c *tcpConn) DropIfStalled(now time.Time, write, frame time.Duration) bool {
	stalled := func(began int64, limit time.Duration) bool {
		return began != 0 && limit > 0 && now.Sub(time.Unix(0, began)) >= limit
	}
	if !stalled(c.writing.Load(), write) && !stalled(c.lines.Started(), frame) {
		return false
	}
	_ = c.CloseNow()
	return true
}
