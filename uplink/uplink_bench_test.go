package uplink_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/uplink"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

// oneBackend is a registry with one backend, always live.
type oneBackend struct{}

func (oneBackend) Pick(context.Context, string, string) string { return "1" }
func (oneBackend) IsLive(string, string) bool                  { return true }
func (oneBackend) MarkDead(string, string)                     {}

// benchClient counts the acks it is sent.
type benchClient struct {
	cid  string
	acks atomic.Int64
}

func (c *benchClient) CID() string     { return c.cid }
func (c *benchClient) Service() string { return "bench" }
func (c *benchClient) Remote() string  { return "127.0.0.1" }
func (c *benchClient) User() string    { return "" }
func (c *benchClient) Send(frame []byte) {
	if len(frame) > 0 && frame[len(frame)-1] == '}' {
		c.acks.Add(1)
	}
}

// BenchmarkUplinkMessage is one client frame through the uplink: queued,
// published to a real Redis in a pipeline with the others queued, acked.
// 1000 clients over 4 workers, as DMB_UPLINK_WORKERS defaults to.
func BenchmarkUplinkMessage(b *testing.B) {
	rs := redistest.Start(b)
	rdb := rs.Client()
	defer rdb.Close()
	ch := protocol.NewChannels("dmb")
	// A subscriber makes the backend live to PUBLISH; what it gets is
	// drained and thrown away.
	ps := rdb.Subscribe(context.Background(), ch.Uplink("1"))
	defer ps.Close()
	if _, err := ps.Receive(context.Background()); err != nil {
		b.Fatal(err)
	}
	go func() {
		for range ps.Channel() {
		}
	}()
	up := uplink.New(rdb, oneBackend{}, uplink.Config{
		Channels: ch, Workers: 4, Metrics: metrics.New(prometheus.NewRegistry()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- up.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	clients := make([]*benchClient, 1000)
	for i := range clients {
		clients[i] = &benchClient{cid: "c" + strconv.Itoa(i)}
		if err := up.Connect(clients[i]); err != nil {
			b.Fatal(err)
		}
	}
	data := json.RawMessage(`{"t":123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	ids := make([]json.RawMessage, 1024)
	for i := range ids {
		ids[i] = json.RawMessage(strconv.Itoa(i + 1))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := up.Message(ctx, clients[i%len(clients)], data, ids[i%len(ids)], false); err != nil {
			b.Fatal(err)
		}
	}
	// Every frame is acked before the clock stops.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int64
		for _, c := range clients {
			n += c.acks.Load()
		}
		if n >= int64(b.N) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d frames acked", n, b.N)
		}
		time.Sleep(time.Millisecond) // polling a count, not synchronising
	}
}
