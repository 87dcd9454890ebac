package broker

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmb-broker/dmb/protocol"
)

// The HTTP fallback (docs/protocol.md, section 12), for networks that let
// no WebSocket through: a client opens a stream of Server-Sent Events,
// GET /sse/{service} (with the WebSocket's query: token, resume, offset),
// and DMB's frames come as its events, each frame one event's data, the
// same JSON as on a WebSocket. The stream's first event, named "post",
// carries the path the client POSTs its frames to: a key of 128 random
// bits that only the stream's reader learns. A POST carries one or more
// frames, one per line, handled in order as a WebSocket's; its answer
// (204) only says they were read, the frames' answers come on the stream.
// DMB ends a stream with a last event, {"event":"dmb:close",...}, as a TCP
// connection ends with a last line.
//
// The session does not know which transport it has: sseConn is its
// Transport. The stream's handler holds the response for as long as the
// session lasts, and returns only when the session's transport is closed,
// or the client went away.

// sseConn carries one session's frames as Server-Sent Events.
type sseConn struct {
	w            http.ResponseWriter
	rc           *http.ResponseController
	writeTimeout time.Duration

	mu      sync.Mutex // one write at a time; guards ended
	ended   bool
	done    chan struct{} // closed when the stream ends
	once    sync.Once
	writing atomic.Int64 // when the write in progress began (UnixNano), 0 if none

	// The session reading the POSTs, set when it runs; reader is closed
	// then. postMu makes the POSTs of one stream its reader, one at a time.
	s      atomic.Pointer[session]
	reader chan struct{}
	postMu sync.Mutex
}

// ssePosts finds a stream by the key of its POSTs.
type ssePosts struct {
	mu    sync.Mutex
	byKey map[string]*sseConn
}

func (p *ssePosts) add(key string, c *sseConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byKey == nil {
		p.byKey = make(map[string]*sseConn)
	}
	p.byKey[key] = c
}

func (p *ssePosts) remove(key string) {
	p.mu.Lock()
	delete(p.byKey, key)
	p.mu.Unlock()
}

func (p *ssePosts) get(key string) *sseConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byKey[key]
}

// ServeSSE is the HTTP fallback's stream; mount it at GET /sse/{service}.
func (b *Broker) ServeSSE(w http.ResponseWriter, r *http.Request) {
	service := r.PathValue("service")
	rc := http.NewResponseController(w)
	// The stream lasts as long as the session: no server-wide deadline
	// applies to it, only the one each write sets.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	b.allowOrigin(w, r)
	c := &sseConn{w: w, rc: rc, writeTimeout: b.cfg.WriteTimeout, done: make(chan struct{}), reader: make(chan struct{})}
	remote := remoteAddr(r, b.cfg.TrustedProxies)
	if !originAllowed(r, b.cfg.AllowedOrigins) {
		b.refuse(c, service, remote, protocol.ClosePolicy, "origin not allowed")
		return
	}
	key := newCID() // 128 random bits, like a cid
	if err := c.event("post", []byte(r.URL.Path+"/"+key)); err != nil {
		return
	}
	b.sse.add(key, c)
	defer b.sse.remove(key)
	q := r.URL.Query()
	hello := Hello{Token: q.Get("token"), Resume: q.Get("resume"), Offset: q.Get("offset")}
	b.accept(c, nil, service, remote, hello, func(s *session) (int, string) {
		c.s.Store(s)
		close(c.reader)
		select {
		case <-c.done:
			return protocol.CloseAbnormal, "connection lost"
		case <-r.Context().Done():
			c.end()
			return protocol.CloseAbnormal, "connection lost"
		}
	})
	select {
	case <-c.done:
	case <-r.Context().Done():
		c.end()
	}
	// No write may use the response once the handler returned.
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
}

// ServeSSEPost takes a stream's frames; mount it at
// POST /sse/{service}/{key}.
func (b *Broker) ServeSSEPost(w http.ResponseWriter, r *http.Request) {
	b.allowOrigin(w, r)
	if r.Method == http.MethodOptions { // a cross-origin page's preflight
		w.WriteHeader(http.StatusNoContent)
		return
	}
	c := b.sse.get(r.PathValue("key"))
	if c == nil || !originAllowed(r, b.cfg.AllowedOrigins) {
		http.Error(w, "no such stream", http.StatusNotFound)
		return
	}
	select {
	case <-c.reader:
	case <-c.done:
		http.Error(w, "no such stream", http.StatusNotFound)
		return
	case <-r.Context().Done():
		return
	}
	s := c.s.Load()
	c.postMu.Lock()
	defer c.postMu.Unlock()
	// A frame over the limit ends the session (1009), as on a WebSocket;
	// a body of many frames is read a line at a time.
	sc := bufio.NewScanner(r.Body)
	limit := int(b.cfg.MaxMessageBytes)
	sc.Buffer(make([]byte, 0, min(limit, 4<<10)+1), limit+1)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || s.closing() {
			continue
		}
		if err := s.handle(line); err != nil {
			s.close(protocol.CloseGoingAway, "server shutting down")
			break
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		s.b.messagesIn.Inc()
		s.close(protocol.CloseTooBig, "message too big")
	}
	w.WriteHeader(http.StatusNoContent)
}

// allowOrigin lets a page of an allowed origin read the stream and POST
// to it (CORS); the same origin needs nothing.
func (b *Broker) allowOrigin(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" || !originAllowed(r, b.cfg.AllowedOrigins) {
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Content-Type")
	h.Add("Vary", "Origin")
}

// event writes one event named name (the default, "message", when empty)
// with data, which holds no line break, and sends it.
func (c *sseConn) event(name string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeLocked(func(bw *bytes.Buffer) { appendEvent(bw, name, data) })
}

// appendEvent appends an event to bw.
func appendEvent(bw *bytes.Buffer, name string, data []byte) {
	if name != "" {
		bw.WriteString("event: ")
		bw.WriteString(name)
		bw.WriteByte('\n')
	}
	bw.WriteString("data: ")
	bw.Write(data)
	bw.WriteString("\n\n")
}

// writeLocked writes what fill appends and sends it, within the write
// timeout. c.mu must be held.
func (c *sseConn) writeLocked(fill func(*bytes.Buffer)) error {
	if c.ended {
		return errSSEEnded
	}
	var bw bytes.Buffer
	fill(&bw)
	now := time.Now()
	c.writing.Store(now.UnixNano())
	defer c.writing.Store(0)
	if c.writeTimeout > 0 {
		_ = c.rc.SetWriteDeadline(now.Add(c.writeTimeout))
	}
	if _, err := c.w.Write(bw.Bytes()); err != nil {
		return err
	}
	return c.rc.Flush()
}

var errSSEEnded = errors.New("event stream ended")

// WriteMany writes frames as events, one each, in one write.
func (c *sseConn) WriteMany(frames [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeLocked(func(bw *bytes.Buffer) {
		for _, f := range frames {
			appendEvent(bw, "", f)
		}
	})
}

// Flush has nothing to do: every write is sent whole.
func (c *sseConn) Flush() error { return nil }

// Close ends the stream with a last event, dmb:close with code and reason.
func (c *sseConn) Close(code int, reason string) error {
	c.mu.Lock()
	err := c.writeLocked(func(bw *bytes.Buffer) { appendEvent(bw, "", protocol.AppendClose(nil, code, reason)) })
	c.mu.Unlock()
	c.end()
	return err
}

// CloseNow ends the stream; a write in progress fails at once.
func (c *sseConn) CloseNow() error {
	_ = c.rc.SetWriteDeadline(time.Now())
	c.end()
	return nil
}

func (c *sseConn) end() { c.once.Do(func() { close(c.done) }) }

// DropIfStalled ends the stream when a write has waited longer than write.
// A POST's frames come whole, in the time the HTTP server gives a request.
func (c *sseConn) DropIfStalled(now time.Time, write, _ time.Duration) bool {
	began := c.writing.Load()
	if began == 0 || write <= 0 || now.Sub(time.Unix(0, began)) < write {
		return false
	}
	_ = c.CloseNow()
	return true
}
