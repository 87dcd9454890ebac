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

func TestCorkedWritesGoOutAsOneWriteInOrder(t *testing.T) {
	log := &writeLog{}
	c := &upgradedConn{Conn: log, r: bufio.NewReader(nil)}

	c.cork()
	for _, s := range []string{"one", "two"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("corked Write(%q) = %d, %v", s, n, err)
		}
	}
	done := make(chan struct{})
	go func() { // what the reader goroutine writes meanwhile (a pong) joins them
		defer close(done)
		_, _ = c.Write([]byte("pong"))
	}()
	<-done
	if len(log.writes) != 0 {
		t.Fatalf("corked writes reached the connection: %q", log.writes)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("after"))
	if err := c.uncork(); err != nil { // nothing held: no write
		t.Fatal(err)
	}
	if want := []string{"onetwopong", "after"}; !slices.Equal(log.writes, want) {
		t.Errorf("writes = %q, want %q", log.writes, want)
	}
}

func TestHeldTextFramesAreReadByTheLibraryInOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 7-bit, 16-bit and 64-bit length forms, and their edges.
	lengths := []int{0, 1, 125, 126, 127, 65535, 65536, 200000}
	got := make(chan []byte, len(lengths))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		for range lengths {
			typ, data, err := ws.Read(ctx)
			if err != nil || typ != websocket.MessageText {
				close(got)
				return
			}
			got <- data
		}
	}))
	defer srv.Close()

	var conn *upgradedConn
	ws, _, err := websocket.Dial(context.WithValue(ctx, connSlot{}, &conn), "ws"+strings.TrimPrefix(srv.URL, "http"),
		&websocket.DialOptions{HTTPClient: wsClient(netip.Addr{})})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	conn.cork()
	var sent [][]byte
	for _, n := range lengths {
		p := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		conn.holdText(p)
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

func TestNoTextFrameIsHeldAfterACloseFrame(t *testing.T) {
	log := &writeLog{}
	c := &upgradedConn{Conn: log, r: bufio.NewReader(nil)}
	c.cork()
	c.holdText([]byte("before"))
	closeFrame := []byte{0x88, 0x02, 0x03, 0xe8} // 1000, as the library writes it
	if _, err := c.Write(closeFrame); err != nil {
		t.Fatal(err)
	}
	c.holdText([]byte("after"))
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	want := string(wsframe.AppendMaskedText(nil, []byte("before"), [4]byte{})) // length only: the key differs
	if len(log.writes) != 1 || len(log.writes[0]) != len(want)+len(closeFrame) ||
		!strings.HasSuffix(log.writes[0], string(closeFrame)) {
		t.Errorf("writes = %q, want the frame held before the close frame, then the close frame", log.writes)
	}
}
