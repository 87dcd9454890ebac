package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The HTTP fallback (docs/protocol.md, section 12): a client reads DMB's
// frames as the events of a stream, GET /sse/{service}, and POSTs its own
// to the path the stream's first event, "post", names.
//
// The stream is a connection of its own, dialed as the WebSocket's and
// read by the client's inbox: the request is written by hand and the
// answer read with http.ReadResponse, whose body undoes the chunked
// encoding. The POSTs go through an http.Client shared by the run's
// clients, whose keep-alive connections they reuse: a client sends its
// next POST when the last was answered, so it holds at most one.

// sseStream is an SSE client's connection as its upgradedConn sees it:
// reads come from the event stream's body, and each write is one POST of
// the frames it holds, one per line, answered before it returns.
type sseStream struct {
	net.Conn // the stream's connection

	body   io.ReadCloser // the stream's body, once its answer was read
	post   *http.Client
	origin string                 // http://host:port
	url    atomic.Pointer[string] // where to POST, from the stream's first event

	writeDeadline atomic.Int64 // UnixNano; 0 when none
	ctx           context.Context
	cancel        context.CancelFunc // ends the POST in progress: Close
	closeOnce     sync.Once
}

func newSSEStream(nc net.Conn, e *endpoint) *sseStream {
	ctx, cancel := context.WithCancel(context.Background())
	return &sseStream{Conn: nc, post: e.post, origin: e.origin, ctx: ctx, cancel: cancel}
}

// postTo takes the data of the stream's "post" event: the path to POST to.
func (s *sseStream) postTo(path []byte) {
	u := s.origin + string(path)
	s.url.Store(&u)
}

// open asks for the event stream with the request head and reads the
// answer's header: it must be 200 with text/event-stream.
func (s *sseStream) open(head string) error {
	if _, err := io.WriteString(s.Conn, head); err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(s.Conn, inboxSize), nil)
	if err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("event stream: HTTP %d", resp.StatusCode)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return fmt.Errorf("event stream: Content-Type %q", resp.Header.Get("Content-Type"))
	}
	s.body = resp.Body
	return nil
}

// Read reads the stream's body.
func (s *sseStream) Read(p []byte) (int, error) { return s.body.Read(p) }

// Write POSTs p, whole lines, and waits for the answer: 204, or 404 when
// the stream is gone. A POST that fails leaves the stream in doubt: it is
// closed, as a connection whose write failed.
func (s *sseStream) Write(p []byte) (int, error) {
	url := s.url.Load()
	if url == nil {
		return 0, errors.New("POST before the stream said where")
	}
	ctx := s.ctx
	if d := s.writeDeadline.Load(); d != 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Unix(0, d))
		defer cancel()
	}
	// The body is read whole before DMB answers: p is not used after.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(p))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.post.Do(req)
	if err != nil {
		_ = s.Close()
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		_ = s.Close()
		return 0, fmt.Errorf("POST: HTTP %d", resp.StatusCode)
	}
	return len(p), nil
}

// SetDeadline sets the stream's deadlines and the POSTs'.
func (s *sseStream) SetDeadline(t time.Time) error {
	s.setWriteDeadline(t)
	return s.Conn.SetDeadline(t)
}

// SetWriteDeadline bounds the POSTs.
func (s *sseStream) SetWriteDeadline(t time.Time) error {
	s.setWriteDeadline(t)
	return nil
}

func (s *sseStream) setWriteDeadline(t time.Time) {
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	s.writeDeadline.Store(d)
}

// Close ends the stream, and the POST in progress: DMB ends the session
// as a connection lost, as when a browser's page goes.
func (s *sseStream) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		err = s.Conn.Close()
	})
	return err
}

// postClient is the HTTP client of the run's POSTs: loopback only, from
// the source addresses in turn, and keeping a connection for each of
// clients (a client POSTs one at a time). It never uses a proxy.
func postClient(dialers []*net.Dialer, clients int) *http.Client {
	var next atomic.Uint64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := dialers[int(next.Add(1)-1)%len(dialers)]
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           dial,
			MaxIdleConns:          clients + 16,
			MaxIdleConnsPerHost:   clients + 16,
			IdleConnTimeout:       time.Minute,
			DisableCompression:    true,
			ResponseHeaderTimeout: handshakeTimeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
