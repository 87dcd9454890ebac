package broker

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/internal/wsconn"
)

// countingListener counts the writes made to the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestAWriterSendsEveryQueuedFrameInOneSocketWrite(t *testing.T) {
	brk := newTestBroker(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	mux := http.NewServeMux()
	mux.Handle("GET /ws/{service}", brk)
	srv := &http.Server{Handler: mux, ConnContext: wsconn.ConnContext}
	go func() { _ = srv.Serve(wsconn.Listen(ln)) }()
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+inner.Addr().String()+"/ws/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, _, err := c.Read(ctx); err != nil { // dmb:connected
		t.Fatal(err)
	}
	// The session is indexed before its first frame is written.
	var sess *session
	brk.mu.RLock()
	for _, s := range brk.byCID {
		sess = s
	}
	brk.mu.RUnlock()
	if sess == nil {
		t.Fatal("no session after dmb:connected")
	}

	const n = 100
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = []byte(fmt.Sprintf(`{"event":"dmb:broadcast","data":%d}`, i))
	}
	before := ln.writes.Load()
	if err := sess.t.WriteMany(frames); err != nil {
		t.Fatal(err)
	}
	if got := ln.writes.Load() - before; got != 1 {
		t.Fatalf("%d frames took %d socket writes, want 1", n, got)
	}
	for i := range n {
		_, data, err := c.Read(ctx)
		if err != nil || string(data) != string(frames[i]) {
			t.Fatalf("frame %d = %q, %v", i, data, err)
		}
	}
}

// TestLeanBuffersCarryLargeAndPipelinedFramesAndPings drives a session
// whose library buffers leanWriter made small: a frame larger than every
// buffer, frames sent back to back, and a ping answered from the reading
// side.
func TestLeanBuffersCarryLargeAndPipelinedFramesAndPings(t *testing.T) {
	brk := newTestBroker(t)
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, _, err := c.Read(ctx); err != nil { // dmb:connected
		t.Fatal(err)
	}
	// Unknown events are answered with an error carrying the id: an echo
	// that needs no backend.
	frames := []string{
		`{"event":"nope","id":1,"pad":"` + strings.Repeat("x", 20000) + `"}`,
		`{"event":"nope","id":2}`, `{"event":"nope","id":3}`, `{"event":"nope","id":4}`,
	}
	for _, f := range frames {
		if err := c.Write(ctx, websocket.MessageText, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range frames {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`"id":%d`, i+1); !strings.Contains(string(data), want) {
			t.Fatalf("answer %d = %s, want %s", i, data, want)
		}
	}
	// A ping is answered, with a pong written from the session's reading
	// side. The client reads to receive the pong, until the ping returns.
	readCtx, stopReading := context.WithCancel(ctx)
	pinged := make(chan error, 1)
	go func() { pinged <- c.Ping(ctx); stopReading() }()
	if _, data, err := c.Read(readCtx); err == nil {
		t.Fatalf("unexpected frame %s", data)
	}
	if err := <-pinged; err != nil {
		t.Fatalf("ping: %v", err)
	}
}
