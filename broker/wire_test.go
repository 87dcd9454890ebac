package broker

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
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
	srv := &http.Server{Handler: mux, ConnContext: ConnContext}
	go func() { _ = srv.Serve(Listen(ln)) }()
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
	var sess *client
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
	if err := sess.write(frames); err != nil {
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
