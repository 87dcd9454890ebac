package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dmb-broker/dmb/internal/wsframe"
)

// writeLog is a connection that records each write it is given.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []string
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

// clientFrame is a frame as a client wrote it, unmasked.
type clientFrame struct {
	op      byte
	payload string
}

// clientFrames reads the masked frames in b, all whole.
func clientFrames(t *testing.T, b string) []clientFrame {
	t.Helper()
	var out []clientFrame
	for len(b) > 0 {
		h, n, err := wsframe.ParseHeader([]byte(b))
		if err != nil || n == 0 || !h.Masked || !h.Fin || len(b) < n+h.Length {
			t.Fatalf("not a whole masked frame: %+v, n %d, %v, in %q", h, n, err, b)
		}
		p := []byte(b[n : n+h.Length])
		for i := range p {
			p[i] ^= h.Key[i&3]
		}
		out = append(out, clientFrame{h.Op, string(p)})
		b = b[n+h.Length:]
	}
	return out
}

func TestCorkedFramesGoOutAsOneWriteInOrder(t *testing.T) {
	log := &writeLog{}
	c := &upgradedConn{Conn: log}

	c.cork()
	for _, s := range []string{"one", "two"} {
		if err := c.writeFrame(wsframe.OpText, []byte(s)); err != nil {
			t.Fatalf("corked writeFrame(%q): %v", s, err)
		}
	}
	done := make(chan struct{})
	go func() { // what the reader goroutine writes meanwhile (a pong) joins them
		defer close(done)
		_ = c.writeFrame(wsframe.OpPong, []byte("ping data"))
	}()
	<-done
	if len(log.writes) != 0 {
		t.Fatalf("corked frames reached the connection: %q", log.writes)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	_ = c.writeFrame(wsframe.OpText, []byte("after"))
	if err := c.uncork(); err != nil { // nothing held: no write
		t.Fatal(err)
	}
	if len(log.writes) != 2 {
		t.Fatalf("%d writes, want 2: %q", len(log.writes), log.writes)
	}
	want := []clientFrame{{wsframe.OpText, "one"}, {wsframe.OpText, "two"}, {wsframe.OpPong, "ping data"}}
	if got := clientFrames(t, log.writes[0]); !slices.Equal(got, want) {
		t.Errorf("first write: %q, want %q", got, want)
	}
	if got := clientFrames(t, log.writes[1]); !slices.Equal(got, []clientFrame{{wsframe.OpText, "after"}}) {
		t.Errorf("second write: %q", got)
	}
}

// dialLibrary makes the clients' handshake with a coder/websocket server
// that runs serve on the connection, and returns the client's connection
// and inbox.
func dialLibrary(ctx context.Context, t *testing.T, serve func(*websocket.Conn)) (*upgradedConn, *inbox) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		serve(ws)
	}))
	t.Cleanup(srv.Close)
	return handshakeWith(ctx, t, srv.URL+"/ws/load?token=x")
}

// handshakeWith dials the server at rawURL (http://) and makes the
// clients' handshake; it fails the test if that fails.
func handshakeWith(ctx context.Context, t *testing.T, rawURL string) (*upgradedConn, *inbox) {
	t.Helper()
	conn, in, err := tryHandshake(ctx, rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, in
}

func tryHandshake(ctx context.Context, rawURL string) (*upgradedConn, *inbox, error) {
	ep, err := newEndpoint("ws" + strings.TrimPrefix(rawURL, "http"))
	if err != nil {
		return nil, nil, err
	}
	nc, err := dialer(netip.Addr{}).DialContext(ctx, "tcp", ep.addr)
	if err != nil {
		return nil, nil, err
	}
	conn := &upgradedConn{Conn: nc}
	in := newInbox(conn, 1<<20)
	if err := ep.handshake(conn, in); err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	return conn, in, nil
}

func TestTheHandshakeIsWhatTheLibraryAcceptsAndAsksForThePath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	asked := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked <- r.URL.RequestURI()
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		_ = ws.Write(ctx, websocket.MessageText, []byte("first"))
	}))
	defer srv.Close()
	_, in := handshakeWith(ctx, t, srv.URL+"/ws/load?token=a%20b")
	if got := <-asked; got != "/ws/load?token=a%20b" {
		t.Errorf("asked for %q", got)
	}
	if p, err := in.next(); err != nil || string(p) != "first" {
		t.Errorf("first message %q, %v", p, err)
	}
}

func TestARefusedHandshakeSaysWhy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "redis unavailable", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, _, err := tryHandshake(ctx, srv.URL+"/ws/load")
	if err == nil || !strings.Contains(err.Error(), "503 Service Unavailable") {
		t.Errorf("handshake error %v, want the status", err)
	}
}

// answer is a 101 answer to the key dGhlIHNhbXBsZSBub25jZQ== of RFC 6455,
// section 1.3, with the lines given after the status line.
func answer(lines ...string) []byte {
	return []byte("HTTP/1.1 101 Switching Protocols\r\n" + strings.Join(lines, "\r\n") + "\r\n")
}

const rfcAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

func TestCheckUpgradeHoldsTheServerToRFC6455(t *testing.T) {
	good := []string{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: " + rfcAccept}
	for _, c := range []struct {
		name string
		head []byte
		ok   bool
	}{
		{"the RFC's example", answer(good...), true},
		{"other cases, spaces, a token list, other headers", answer("upgrade:WebSocket", "Date: x",
			"connection: keep-alive, upgrade", "sec-websocket-accept:  "+rfcAccept+"\t"), true},
		{"a bare 101", []byte("HTTP/1.1 101\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + rfcAccept + "\r\n"), true},
		{"another key's accept", answer("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: x3JJHMbDL1EzLkh9GBhXDw=="), false},
		{"no accept", answer(good[:2]...), false},
		{"no Upgrade", answer(good[1:]...), false},
		{"Upgrade: h2c", answer("Upgrade: h2c", good[1], good[2]), false},
		{"no Connection", answer(good[0], good[2]), false},
		{"an extension", answer(append(good, "Sec-WebSocket-Extensions: permessage-deflate")...), false},
		{"a subprotocol", answer(append(good, "Sec-WebSocket-Protocol: chat")...), false},
		{"a line without a colon", answer(append(good, "oops")...), false},
		{"200", []byte("HTTP/1.1 200 OK\r\n" + strings.Join(good, "\r\n") + "\r\n"), false},
		{"1010", []byte("HTTP/1.1 1010 x\r\n" + strings.Join(good, "\r\n") + "\r\n"), false},
		{"HTTP/1.0", []byte("HTTP/1.0 101 Switching Protocols\r\n" + strings.Join(good, "\r\n") + "\r\n"), false},
		{"empty", nil, false},
	} {
		if err := checkUpgrade(c.head, rfcAccept); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// FuzzCheckUpgrade checks that no answer makes checkUpgrade panic and that
// only a 101 with the accept value passes.
func FuzzCheckUpgrade(f *testing.F) {
	f.Add(answer("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: "+rfcAccept))
	f.Add(answer("Upgrade: websocket", "Connection: keep-alive,  UPGRADE ", "Sec-WebSocket-Accept:"+rfcAccept))
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 18\r\n"))
	f.Add([]byte("HTTP/1.1 101\r\n:\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		if checkUpgrade(head, rfcAccept) != nil {
			return
		}
		if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) || !bytes.Contains(head, []byte(rfcAccept)) {
			t.Fatalf("passed: %q", head)
		}
	})
}

func TestHeldTextFramesAreReadByTheLibraryInOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 7-bit, 16-bit and 64-bit length forms, and their edges.
	lengths := []int{0, 1, 125, 126, 127, 65535, 65536, 200000}
	got := make(chan []byte, len(lengths))
	conn, _ := dialLibrary(ctx, t, func(ws *websocket.Conn) {
		ws.SetReadLimit(1 << 20)
		for range lengths {
			typ, data, err := ws.Read(ctx)
			if err != nil || typ != websocket.MessageText {
				close(got)
				return
			}
			got <- data
		}
	})
	conn.cork()
	var sent [][]byte
	for _, n := range lengths {
		p := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		_ = conn.writeFrame(wsframe.OpText, p)
		sent = append(sent, p)
	}
	if err := conn.uncork(); err != nil {
		t.Fatal(err)
	}
	for i, want := range sent {
		select {
		case data, ok := <-got:
			if !ok {
				t.Fatalf("the server stopped reading at frame %d", i)
			}
			if !bytes.Equal(data, want) {
				t.Fatalf("frame %d: %d bytes, want %d", i, len(data), len(want))
			}
		case <-ctx.Done():
			t.Fatalf("frame %d not read", i)
		}
	}
}

func TestNoFrameIsWrittenAfterACloseFrame(t *testing.T) {
	log := &writeLog{}
	c := &upgradedConn{Conn: log}
	c.cork()
	_ = c.writeFrame(wsframe.OpText, []byte("before"))
	_ = c.writeFrame(wsframe.OpClose, []byte{0x03, 0xe8})
	_ = c.writeFrame(wsframe.OpText, []byte("after"))
	_ = c.writeFrame(wsframe.OpPong, nil)
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	_ = c.writeFrame(wsframe.OpClose, []byte{0x03, 0xe8}) // not a second one either
	want := []clientFrame{{wsframe.OpText, "before"}, {wsframe.OpClose, "\x03\xe8"}}
	if len(log.writes) != 1 || !slices.Equal(clientFrames(t, log.writes[0]), want) {
		t.Errorf("writes = %q, want the frame held before the close frame, then the close frame", log.writes)
	}
}

func TestASilentServerEndsTheHandshakeAsATimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() { // accepts, reads nothing, answers nothing
		if c, err := ln.Accept(); err == nil {
			held <- c
		}
	}()
	ep, err := newEndpoint("ws://" + ln.Addr().String() + "/ws/load")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = dialClient(ctx, dialer(netip.Addr{}), ep, 4096)
	if got := failureReason(err); got != "timeout" {
		t.Errorf("failure %q (%v), want timeout", got, err)
	}
	(<-held).Close()
}
