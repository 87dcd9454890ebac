package main

import (
	"bufio"
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
	c := &upgradedConn{Conn: log, r: bufio.NewReader(nil)}

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

// dialLibrary connects through wsClient to a coder/websocket server that
// runs serve on the connection, and returns the client's connection.
func dialLibrary(ctx context.Context, t *testing.T, serve func(*websocket.Conn)) *upgradedConn {
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
	var conn *upgradedConn
	ws, _, err := websocket.Dial(context.WithValue(ctx, connSlot{}, &conn), "ws"+strings.TrimPrefix(srv.URL, "http"),
		&websocket.DialOptions{HTTPClient: wsClient(netip.Addr{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.CloseNow() })
	return conn
}

func TestHeldTextFramesAreReadByTheLibraryInOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 7-bit, 16-bit and 64-bit length forms, and their edges.
	lengths := []int{0, 1, 125, 126, 127, 65535, 65536, 200000}
	got := make(chan []byte, len(lengths))
	conn := dialLibrary(ctx, t, func(ws *websocket.Conn) {
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
	c := &upgradedConn{Conn: log, r: bufio.NewReader(nil)}
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
