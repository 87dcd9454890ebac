package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestAnEventStreamIsReadByteByByte feeds an event stream one byte at a
// time: the "post" event says where to POST, comments and other fields are
// passed over, every data line is a frame, and dmb:close ends the stream
// with its code.
func TestAnEventStreamIsReadByteByByte(t *testing.T) {
	stream := ": a comment\r\n" +
		"event: post\ndata: /sse/chat/k3y\n\n" +
		"retry: 1000\nid: 7\ndata: {\"event\":\"dmb:connected\",\"cid\":\"c1\"}\n\n" +
		"data:{\"no\":\"space\"}\r\n\r\n" +
		"event: other\ndata: not a frame\n\n" +
		"event: message\ndata: {\"named\":\"message\"}\n\n" +
		"data: {\"event\":\"dmb:close\",\"code\":4004,\"reason\":\"unknown service\"}\n\n"
	ours, theirs := net.Pipe()
	defer ours.Close()
	go func() {
		defer theirs.Close()
		for i := range len(stream) {
			if _, err := theirs.Write([]byte{stream[i]}); err != nil {
				return
			}
		}
	}()
	s := &sseStream{Conn: ours, body: ours, origin: "http://127.0.0.1:8082", cancel: func() {}}
	in := newInbox(&upgradedConn{Conn: s, lines: true, events: true}, 100)
	got, err := nextUntilError(in)
	want := []string{`{"event":"dmb:connected","cid":"c1"}`, `{"no":"space"}`, `{"named":"message"}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("frames %q, want %q", got, want)
	}
	if code := websocket.CloseStatus(err); code != 4004 {
		t.Errorf("ended with %v, want close 4004", err)
	}
	if u := s.url.Load(); u == nil || *u != "http://127.0.0.1:8082/sse/chat/k3y" {
		t.Errorf("POSTs go to %v", u)
	}
}

// TestAnSSEClientIsRefusedWithDMBsCode opens event streams on a real node:
// one of a service nobody registered gets the stream's post event, then
// dmb:close 4004, which the handshake reports as the close; a path that is
// no stream is refused with its HTTP status.
func TestAnSSEClientIsRefusedWithDMBsCode(t *testing.T) {
	tg := startTarget(t)
	d := dialer(netip.Addr{})
	post := postClient([]*net.Dialer{d}, 1)
	defer post.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base := "http" + strings.TrimPrefix(tg.dmb, "ws")
	for _, tc := range []struct{ path, want string }{
		{"/sse/nobody", "close 4004"},
		{"/sse/", "event stream: HTTP 404"},
	} {
		e, err := newSSEEndpoint(base+tc.path, post)
		if err != nil {
			t.Fatal(err)
		}
		c, err := dialClient(ctx, d, e, 4096)
		if err == nil {
			c.conn.Close()
			t.Errorf("%s: connected as %s", tc.path, c.cid)
			continue
		}
		if got := failureReason(err); got != tc.want {
			t.Errorf("%s: refused with %q (%v), want %q", tc.path, got, err, tc.want)
		}
	}
}

// TestAPostToAStreamThatIsGoneFails: a stream's POSTs go to its key only
// while it lasts; DMB answers 404 after, and the write fails.
func TestAPostToAStreamThatIsGoneFails(t *testing.T) {
	tg := startTarget(t)
	d := dialer(netip.Addr{})
	post := postClient([]*net.Dialer{d}, 1)
	defer post.CloseIdleConnections()
	e, err := newSSEEndpoint("http"+strings.TrimPrefix(tg.dmb, "ws")+"/sse/nobody", post)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	s := newSSEStream(nc, e)
	defer s.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := s.open(e.head); err != nil {
		t.Fatal(err)
	}
	in := newInbox(&upgradedConn{Conn: s, lines: true, events: true}, 4096)
	if _, err := in.next(); websocket.CloseStatus(err) != 4004 {
		t.Fatalf("stream of an unknown service: %v, want close 4004", err)
	}
	if s.url.Load() == nil {
		t.Fatal("the stream said nowhere to POST")
	}
	// The client closed its side on dmb:close; another POSTs to the path.
	other := newSSEStream(nc, e)
	other.url.Store(s.url.Load())
	if _, err := other.Write([]byte("{\"event\":\"dmb:message\",\"data\":1}\n")); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("POST to a stream that ended: err = %v, want HTTP 404", err)
	}
}
