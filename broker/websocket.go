package broker

import (
	"errors"
	"net/http"
	"sync"

	"github.com/dmb-broker/dmb/internal/readall"
	"github.com/dmb-broker/dmb/internal/wsconn"
	"github.com/dmb-broker/dmb/protocol"
)

// ServeHTTP is the WebSocket endpoint; mount it at /ws/{service}. It
// accepts the connection (internal/wsconn), checks its origin, and hands
// it to accept, which runs the session on a goroutine of its own: the
// handler returns, and the request, the HTTP server's state for
// the connection and the deep stack that serving the upgrade grew are then
// garbage instead of being kept as long as the client stays. Shutdown
// waits for the session.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	service := r.PathValue("service")
	conn, err := wsconn.Accept(w, r, &b.ws)
	if err != nil {
		b.log.Debug("websocket upgrade failed", "err", err, "remote", r.RemoteAddr)
		return
	}
	remote := remoteAddr(r, b.cfg.TrustedProxies)
	if !originAllowed(r, b.cfg.AllowedOrigins) {
		b.refuse(conn, service, remote, protocol.ClosePolicy, "origin not allowed")
		return
	}
	var inline InlineWriter
	if w := conn.InlineWriter(); w != nil {
		inline = w
	}
	q := r.URL.Query()
	h := Hello{Token: q.Get("token"), Resume: q.Get("resume"), Offset: q.Get("offset")}
	b.accept(conn, inline, service, remote, h, func(s *session) (int, string) { return readFrames(s, conn) })
}

// readFrames reads the client's frames and hands them to the session until
// the connection ends; it returns the close code and reason the client
// gave, or what ended the connection.
func readFrames(s *session, conn *wsconn.Conn) (int, string) {
	discarded := 0      // bytes read after the session began to close
	discarding := false // the connection drops the data frames itself
	for {
		text, r, err := conn.Next()
		if err != nil {
			return wsconn.CloseStatus(err)
		}
		// The buffer is taken only now that a frame has come: a client
		// that waits holds none.
		buf := frameBuffers.Get().(*[]byte)
		*buf, err = readall.Into((*buf)[:0], r)
		var stop error
		switch {
		case err != nil:
		case !s.closing():
			if text {
				stop = s.handle(*buf)
			} else {
				s.refuseBinary()
			}
		default:
			// Closing: read on until the close handshake ends, but not for
			// a client that floods on while its close frame waits behind
			// what it does not read.
			libraryDiscards.Add(1)
			if discarded += len(*buf); discarded > maxDiscarded {
				err = errFloodedWhileClosing
			}
		}
		if cap(*buf) <= maxPooledFrame {
			frameBuffers.Put(buf)
		}
		if err != nil {
			return wsconn.CloseStatus(err)
		}
		if !discarding && s.closing() {
			discarding = discardFrames(conn, discarded)
		}
		if stop != nil {
			return protocol.CloseGoingAway, "server shutting down"
		}
	}
}

// frameBuffers lends the readers a buffer for the frame at hand: the uplink
// copies what it keeps, so a frame costs no allocation of its own.
var frameBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}

// maxDiscarded bounds what a closing session reads and throws away.
const maxDiscarded = 64 << 10

// errFloodedWhileClosing ends a session that sent more than maxDiscarded
// after it began to close; its close request gives the code.
var errFloodedWhileClosing = errors.New("client flooded while its connection closed")

// maxPooledFrame bounds the buffers frameBuffers keeps: a rare large frame
// should not hold its memory for ever.
const maxPooledFrame = 64 << 10

// discardFrames has a closing session's connection drop what the client
// sends from now on, below the WebSocket library, within what is left of
// maxDiscarded after the discarded bytes read already: a flooder closed
// for its rate has filled its socket with frames, and the library's reader
// spends a lock, a channel and a byte-by-byte header read on each. Next
// then returns at the client's close frame, or fails once the client sent
// more than maxDiscarded in all. False when the connection cannot drop
// frames itself (TLS): readFrames reads and throws them away as before.
func discardFrames(conn *wsconn.Conn, discarded int) bool {
	return conn.Discard(maxDiscarded - discarded)
}
