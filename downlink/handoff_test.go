package downlink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// stuckSink takes broadcasts, the first of which waits for release: a
// fan-out that fell behind.
type stuckSink struct {
	release chan struct{}
	got     chan string
}

func (s stuckSink) Broadcast(_ string, frame []byte, _ []string) int {
	if len(s.got) == 0 {
		<-s.release
	}
	s.got <- string(frame)
	return 1
}
func (stuckSink) Serves(string) bool                              { return true }
func (stuckSink) Direct(string, string, []byte) int               { return 0 }
func (stuckSink) DirectUser(string, string, []byte, []string) int { return 0 }
func (stuckSink) Resumed(string, string) int                      { return 0 }
func (stuckSink) Kick(string, string, string) int                 { return 0 }
func (stuckSink) Join(string, string, string, string) (int, int)  { return 0, 0 }
func (stuckSink) Leave(string, string, string, string) int        { return 0 }
func (stuckSink) Room(string, string, []byte, []string) int       { return 0 }
func (stuckSink) Presence(string, string, bool, int) (int, []protocol.Member, bool) {
	return 0, nil, false
}

type oneService struct{}

func (oneService) ServiceOf(context.Context, string) (string, bool, error) { return "chat", true, nil }

type nowhere struct{}

func (nowhere) Publish(string, []byte) error { return nil }

// While the fan-out is stuck, the reader still takes every message at
// once: what fits the queue's bytes waits, in order, and the rest is
// dropped and counted.
func TestTheReaderNeverWaitsForAStuckFanout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := metrics.New(prometheus.NewRegistry())
	sink := stuckSink{release: make(chan struct{}), got: make(chan string, 100)}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	d := New(rdb, oneService{}, sink, nowhere{}, Config{
		Channels: protocol.NewChannels("dmb"), NodeID: "n", Metrics: m,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxQueued: 10 * 40, // ten payloads of 40 bytes
	})
	workCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); d.work(workCtx) }()
	defer func() { stop(); <-done }()

	payload := func(i int) string { return fmt.Sprintf(`{"type":"broadcast","data":"%09d"}`, i) } // 40 bytes
	offered := make(chan struct{})
	go func() {
		defer close(offered)
		for i := range 50 {
			d.offer(ctx, &redis.Message{Channel: "dmb:42", Payload: payload(i)})
		}
	}()
	select {
	case <-offered:
	case <-ctx.Done():
		t.Fatal("the reader waited for the fan-out")
	}
	var c dto.Metric
	if err := m.Drops.WithLabelValues(metrics.DropDownlinkBehind).Write(&c); err != nil {
		t.Fatal(err)
	}
	dropped := c.GetCounter().GetValue()
	if dropped < 30 || dropped > 40 {
		t.Fatalf("%v messages dropped, want the 39 or so that did not fit", dropped)
	}
	close(sink.release)
	last := -1
	for range 50 - int(dropped) {
		select {
		case f := <-sink.got:
			var i int
			if _, err := fmt.Sscanf(f, `{"event":"dmb:broadcast","data":"%09d"}`, &i); err != nil || i <= last {
				t.Fatalf("frame %s after %d", f, last)
			}
			last = i
		case <-ctx.Done():
			t.Fatal("the queued messages were not handled")
		}
	}
}
