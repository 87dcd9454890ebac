package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/internal/wsconn"
	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/registry"
	"github.com/dmb-broker/dmb/uplink"
)

// The benchmarks below measure the broker's own hot path, so the registry
// and uplink are replaced at their seams by ones that accept everything.
type liveRegistry struct{}

func (liveRegistry) Lookup(context.Context, string) (registry.Status, error) {
	return registry.Live, nil
}

type nullUplink struct{}

func (nullUplink) Connect(uplink.Client) error { return nil }
func (nullUplink) Message(context.Context, uplink.Client, json.RawMessage, json.RawMessage, bool) error {
	return nil
}
func (nullUplink) Resume(uplink.Client, string, []string) error       { return nil }
func (nullUplink) Disconnect(uplink.Client, int, string, bool) error  { return nil }
func (nullUplink) Drop(uplink.Client) error                           { return nil }
func (nullUplink) Event(context.Context, uplink.Client, []byte) error { return nil }
func (nullUplink) Settle(context.Context, string) error               { return nil }
func (nullUplink) After(_ context.Context, _ uplink.Client, fn func()) error {
	fn()
	return nil
}

var payload100 = json.RawMessage(`{"text":"` + strings.Repeat("x", 89) + `"}`)

func BenchmarkEncodeBroadcast(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf = protocol.AppendBroadcast(buf[:0], payload100)
	}
}

func BenchmarkQueuePushTake(b *testing.B) {
	q := newSendQueue(1<<20, func() {})
	frame := protocol.AppendBroadcast(nil, payload100)
	b.ReportAllocs()
	for b.Loop() {
		q.push(frame, 1)
		if frames, _, _ := q.take(); len(frames) > 0 {
			q.recycle(frames)
		}
		q.take() // the writer ends on the empty queue; the next push starts one
	}
}

// fanoutRig is a broker on a loopback listener with n reading clients.
type fanoutRig struct {
	brk      *Broker
	srv      *http.Server
	clients  []*websocket.Conn
	received atomic.Int64
	readers  sync.WaitGroup
}

// countingUplink is a nullUplink that counts client messages.
type countingUplink struct {
	nullUplink
	messages, heavy atomic.Int64
}

func (u *countingUplink) Message(_ context.Context, _ uplink.Client, _, _ json.RawMessage, heavy bool) error {
	u.messages.Add(1)
	if heavy {
		u.heavy.Add(1)
	}
	return nil
}

// newTestBroker returns a broker whose registry accepts every service and
// whose uplink drops everything.
func newTestBroker(tb testing.TB) *Broker { return newTestBrokerWith(tb, nullUplink{}) }

func newTestBrokerWith(tb testing.TB, up Uplink) *Broker {
	tb.Helper()
	return runBroker(tb, New(liveRegistry{}, up, testConfig()))
}

// testConfig is a broker's Config for tests, with a discarded log and
// metrics of its own, changed by each of set.
func testConfig(set ...func(*Config)) Config {
	cfg := Config{
		SendQueue: 4096, MaxMessageBytes: 65536, ClientErrorLimit: 10, WriteTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.New(prometheus.NewRegistry()),
	}
	for _, f := range set {
		f(&cfg)
	}
	return cfg
}

// runBroker runs brk's loops until the test ends, after the clean-ups
// registered later (which shut the broker down).
func runBroker(tb testing.TB, brk *Broker) *Broker {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = brk.Run(ctx)
	}()
	tb.Cleanup(func() { stop(); <-done })
	return brk
}

// serveBroker serves brk's WebSocket endpoint on a loopback listener wrapped
// by wsconn.Listen, as a node does; it returns the server and its address.
func serveBroker(tb testing.TB, brk *Broker) (*http.Server, string) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ws/{service}", brk)
	srv := &http.Server{Handler: mux, ConnContext: wsconn.ConnContext}
	go func() { _ = srv.Serve(wsconn.Listen(ln)) }()
	return srv, ln.Addr().String()
}

// dialWelcomed connects a client to url and reads its dmb:connected.
func dialWelcomed(tb testing.TB, url string) *websocket.Conn {
	tb.Helper()
	c, _, err := websocket.Dial(context.Background(), url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if _, _, err := c.Read(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return c
}

func newFanoutRig(b *testing.B, n int) *fanoutRig {
	b.Helper()
	brk := newTestBroker(b)
	srv, addr := serveBroker(b, brk)
	r := &fanoutRig{brk: brk, srv: srv}
	url := "ws://" + addr + "/ws/bench"
	for range n {
		c := dialWelcomed(b, url)
		r.clients = append(r.clients, c)
		r.readers.Add(1)
		go func() {
			defer r.readers.Done()
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
				r.received.Add(1)
			}
		}()
	}
	for brk.Clients() < n {
		time.Sleep(time.Millisecond) // setup only, outside the timed loop
	}
	return r
}

func (r *fanoutRig) close() {
	_ = r.srv.Close()
	_ = r.brk.Shutdown(context.Background())
	for _, c := range r.clients {
		_ = c.CloseNow()
	}
	r.readers.Wait()
}

// BenchmarkFanout measures a broadcast to 1000 clients: encoded once,
// queued to each client, written by each client's writer, read by the
// clients over loopback. One op is one broadcast; deliveries/s is reported.
func BenchmarkFanout1000(b *testing.B) {
	const n = 1000
	r := newFanoutRig(b, n)
	defer r.close()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	sent := 0
	for b.Loop() {
		r.brk.Broadcast("bench", protocol.AppendBroadcast(nil, payload100), nil)
		sent++
		// Keep the queues from overflowing: let readers catch up every 256.
		if sent%256 == 0 {
			for r.received.Load() < int64(sent-128)*n {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	for r.received.Load() < int64(sent)*n {
		time.Sleep(50 * time.Microsecond)
	}
	b.ReportMetric(float64(sent*n)/time.Since(start).Seconds(), "deliveries/s")
}

// BenchmarkFanoutPaced1000 measures a broadcast to 1000 clients that have
// read everything before it, as at a few broadcasts a second: each client's
// queue is empty and no writer runs, so the fan-out writes the frame to
// each socket itself. One op is one Broadcast call; the wait for the
// clients to read it, and a pause that lets the fan-out count as idle, are
// not timed.
func BenchmarkFanoutPaced1000(b *testing.B) {
	const n = 1000
	r := newFanoutRig(b, n)
	defer r.close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r.brk.Broadcast("bench", protocol.AppendBroadcast(nil, payload100), nil)
		b.StopTimer()
		for r.received.Load() < int64(i+1)*n {
			time.Sleep(20 * time.Microsecond)
		}
		time.Sleep(2 * fanoutIdle) // pacing, not synchronisation
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
}

func BenchmarkAppendTextFrame(b *testing.B) {
	frame := protocol.AppendBroadcast(nil, payload100)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = wsframe.AppendText(buf[:0], frame)
	}
}

// BenchmarkClientFrames measures the node's read path for client frames:
// each is read, decoded and handed to the uplink. One op is one frame of a
// client that sends them back to back; the allocations include the
// sending client's.
func BenchmarkClientFrames(b *testing.B) {
	up := &countingUplink{}
	brk := newTestBrokerWith(b, up)
	srv, addr := serveBroker(b, brk)
	defer func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) }()
	ctx := context.Background()
	c := dialWelcomed(b, "ws://"+addr+"/ws/bench")
	defer func() { _ = c.CloseNow() }()
	frame := []byte(`{"event":"dmb:message","data":` + string(payload100) + `,"id":12345}`)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.Write(ctx, websocket.MessageText, frame); err != nil {
			b.Fatal(err)
		}
	}
	for up.messages.Load() < int64(b.N) {
		time.Sleep(20 * time.Microsecond)
	}
}

// cids returns the cids of the broker's sessions.
func (r *fanoutRig) cids() []string {
	r.brk.mu.RLock()
	defer r.brk.mu.RUnlock()
	out := make([]string, 0, len(r.brk.byCID))
	for cid := range r.brk.byCID {
		out = append(out, cid)
	}
	return out
}

// BenchmarkRoom1000 measures room messages over the same 1000 clients as
// BenchmarkFanout1000, in 100 rooms of 10: one op is one room message, to
// the rooms in turn; deliveries/s compares with the broadcast's.
func BenchmarkRoom1000(b *testing.B) {
	const n, rooms = 1000, 100
	r := newFanoutRig(b, n)
	defer r.close()
	names := make([]string, rooms)
	for i := range names {
		names[i] = fmt.Sprintf("room-%d", i)
	}
	for i, cid := range r.cids() {
		r.brk.Join("bench", cid, "", names[i%rooms])
	}
	for r.received.Load() < n { // the dmb:joined frames
		time.Sleep(50 * time.Microsecond)
	}
	base := r.received.Load()
	frames := make([][]byte, rooms)
	for i, name := range names {
		frames[i] = protocol.AppendRoom(nil, name, payload100)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	sent := 0
	for b.Loop() {
		r.brk.Room("bench", names[sent%rooms], frames[sent%rooms], nil)
		sent++
		if sent%2560 == 0 {
			for r.received.Load()-base < int64(sent-1280)*n/rooms {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	for r.received.Load()-base < int64(sent)*n/rooms {
		time.Sleep(50 * time.Microsecond)
	}
	b.ReportMetric(float64(sent*n/rooms)/time.Since(start).Seconds(), "deliveries/s")
}

// BenchmarkJoin measures joins by cid over 1000 clients, each told
// dmb:joined: one op is one join, of the next client into the next of 10
// rooms.
func BenchmarkJoin(b *testing.B) {
	const n = 1000
	r := newFanoutRig(b, n)
	defer r.close()
	cids := r.cids()
	names := make([]string, 10)
	for i := range names {
		names[i] = fmt.Sprintf("room-%d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		cid := cids[i%n]
		room := names[(i/n)%len(names)]
		if i >= n*len(names) { // every client is in every room: start over
			r.brk.Leave("bench", cid, "", room)
		}
		r.brk.Join("bench", cid, "", room)
		i++
	}
}
