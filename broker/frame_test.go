package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/uplink"
)

// dialBroker connects a WebSocket client to a broker served over loopback
// and reads its dmb:connected.
func dialBroker(t *testing.T, ctx context.Context, brk *Broker) *websocket.Conn {
	t.Helper()
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	if _, _, err := c.Read(ctx); err != nil { // dmb:connected
		t.Fatal(err)
	}
	waitFor(t, ctx, func() bool { return brk.Clients() == 1 })
	return c
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met before the deadline")
		case <-tick.C:
		}
	}
}

func TestTextFramesOfEveryLengthFormAreReadByTheLibrary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	brk := newTestBroker(t)
	c := dialBroker(t, ctx, brk)
	c.SetReadLimit(1 << 20)
	// 7-bit, 16-bit and 64-bit length forms, and their edges.
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 200000} {
		payload := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		if got := brk.Broadcast("chat", payload, nil); got != 1 {
			t.Fatalf("length %d: broadcast reached %d clients", n, got)
		}
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("length %d: %v", n, err)
		}
		if typ != websocket.MessageText || !bytes.Equal(data, payload) {
			t.Fatalf("length %d: read %v of %d bytes", n, typ, len(data))
		}
		if want := wsframe.TextSize(payload); len(wsframe.AppendText(nil, payload)) != want {
			t.Fatalf("length %d: TextSize %d", n, want)
		}
	}
}

// TestInlineWritesThatDoNotFitKeepFramesWholeAndInOrder fills a client's
// socket while the client does not read, so that the fan-out's inline writes
// stop part way through frames and the rest goes through the writer, while
// the client pings (pongs are written by the library on the reading side).
// Every frame must arrive whole and in order.
func TestInlineWritesThatDoNotFitKeepFramesWholeAndInOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// 6 MB go out while the client does not read: the queue must hold
	// what its socket does not, far from its bound in bytes.
	brk := runBroker(t, New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) { c.SendQueueBytes = 1 << 30 })))
	c := dialBroker(t, ctx, brk)
	c.SetReadLimit(1 << 20)

	const frames = 200
	pad := strings.Repeat("x", 30000)
	for i := range frames {
		payload := fmt.Appendf(nil, `{"seq":%d,"pad":"%s"}`, i, pad)
		if got := brk.Broadcast("chat", payload, nil); got != 1 {
			t.Fatalf("frame %d reached %d clients", i, got)
		}
	}
	pinged := make(chan error, 1)
	go func() {
		for range 5 {
			if err := c.Ping(ctx); err != nil {
				pinged <- err
				return
			}
		}
		pinged <- nil
	}()
	for i := range frames {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if want := fmt.Sprintf(`{"seq":%d,"pad":"%s"}`, i, pad); string(data) != want {
			t.Fatalf("frame %d: got %.40q", i, data)
		}
	}
	// The pings are answered once the client reads: read on until they are.
	readCtx, stopReading := context.WithCancel(ctx)
	go func() {
		for {
			if _, _, err := c.Read(readCtx); err != nil {
				return
			}
		}
	}()
	err := <-pinged
	stopReading()
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func TestAKickIsSentAfterTheBroadcastsBeforeIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	brk := newTestBroker(t)
	c := dialBroker(t, ctx, brk)
	var cid string
	brk.mu.RLock()
	for id := range brk.byCID {
		cid = id
	}
	brk.mu.RUnlock()
	for i := range 3 {
		brk.Broadcast("chat", fmt.Appendf(nil, `{"n":%d}`, i), nil)
	}
	if brk.Kick("chat", cid, "bye") != 1 {
		t.Fatal("kick did not reach the client")
	}
	for i := range 3 {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if want := fmt.Sprintf(`{"n":%d}`, i); string(data) != want {
			t.Fatalf("frame %d = %s, want %s", i, data, want)
		}
	}
	_, _, err := c.Read(ctx)
	if websocket.CloseStatus(err) != 4009 {
		t.Fatalf("read after the frames: %v, want close 4009", err)
	}
}

func TestAWriteToAClientThatStopsReadingIsCutAfterTheWriteTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := disconnects{make(chan int, 1)}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.SendQueue = 1 << 16
		c.SendQueueBytes = 1 << 30
		c.WriteTimeout = 200 * time.Millisecond
	})))
	dialBroker(t, ctx, brk)
	// The client never reads again: 24 MB fill its socket buffers, a
	// write blocks, and the watchdog ends the session. The queue holds
	// what is left, far from overflowing.
	big := bytes.Repeat([]byte("x"), 60000)
	for range 400 {
		if brk.Broadcast("chat", big, nil) != 1 {
			t.Fatal("the client was closed before its write stalled")
		}
	}
	select {
	case code := <-up.codes:
		if code != protocol.CloseAbnormal {
			t.Fatalf("session ended with %d, want %d (connection lost)", code, protocol.CloseAbnormal)
		}
	case <-ctx.Done():
		t.Fatal("the stalled write was not cut")
	}
}

// disconnects is an uplink that reports the close code of each session.
type disconnects struct{ codes chan int }

func (disconnects) Connect(uplink.Client) error { return nil }
func (disconnects) Message(context.Context, uplink.Client, json.RawMessage, json.RawMessage, bool) error {
	return nil
}
func (disconnects) Resume(uplink.Client, string, []string) error { return nil }
func (disconnects) Drop(uplink.Client) error                     { return nil }
func (d disconnects) Disconnect(_ uplink.Client, code int, _ string, _ bool) error {
	d.codes <- code
	return nil
}
func (disconnects) After(_ context.Context, _ uplink.Client, fn func()) error { fn(); return nil }
func (disconnects) Event(context.Context, uplink.Client, []byte) error        { return nil }
func (disconnects) Settle(context.Context, string) error                      { return nil }

// A broadcast far larger than the socket takes, to a client with nothing
// queued: the fan-out's inline write sends part of it, and the writer it
// starts must send the rest, though nothing else is ever queued.
func TestTheRestOfAFrameAnInlineWriteLeftIsSent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	brk := newTestBroker(t)
	c := dialBroker(t, ctx, brk)
	c.SetReadLimit(64 << 20)
	payload := bytes.Repeat([]byte("y"), 32<<20)
	if got := brk.Broadcast("chat", payload, nil); got != 1 {
		t.Fatalf("broadcast reached %d clients", got)
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(data, payload) {
		t.Fatalf("read %d bytes, want %d", len(data), len(payload))
	}
}

// A set large enough to be split over goroutines (2*fanoutPart clients and
// more) gets every broadcast, each client in order: the first written
// inline in parallel runs, the ones right after it queued.
func TestABroadcastSplitOverGoroutinesReachesEveryClientInOrder(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	brk := newTestBroker(t)
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	const clients = 2*fanoutPart + 37
	var conns []*websocket.Conn
	for range clients {
		c := dialWelcomed(t, "ws://"+addr+"/ws/chat")
		t.Cleanup(func() { _ = c.CloseNow() })
		conns = append(conns, c)
	}
	waitFor(t, ctx, func() bool { return brk.Clients() == clients })
	const frames = 3
	for i := range frames {
		if got := brk.Broadcast("chat", fmt.Appendf(nil, "m%d", i), nil); got != clients {
			t.Fatalf("broadcast %d reached %d clients, want %d", i, got, clients)
		}
	}
	errs := make(chan error, clients)
	for k, c := range conns {
		go func() {
			for i := range frames {
				_, data, err := c.Read(ctx)
				if err == nil && string(data) != fmt.Sprintf("m%d", i) {
					err = fmt.Errorf("frame %d is %q", i, data)
				}
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", k, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A flood of refused clients writes one log line per interval, not one per
// client.
func TestAFloodOfRefusalsWritesOneLogLine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var logs syncBuffer
	brk := runBroker(t, New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) {
		c.SendQueue = 64
		c.AllowedOrigins = []string{"app.example"}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	for range 50 {
		c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/chat", &websocket.DialOptions{
			HTTPHeader: http.Header{"Origin": {"https://evil.example"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != protocol.ClosePolicy {
			t.Fatalf("read: %v, want close 1008", err)
		}
		_ = c.CloseNow()
	}
	if n := strings.Count(logs.String(), "client refused"); n != 1 {
		t.Fatalf("50 refusals wrote %d log lines, want 1", n)
	}
}

// syncBuffer is a buffer that log handlers on several goroutines may write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
