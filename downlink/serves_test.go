package downlink

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// absentSink has no client: every frame handed to it is a frame built for
// nobody.
type absentSink struct {
	stuckSink
	handed *int
}

func (absentSink) Serves(string) bool { return false }
func (s absentSink) Broadcast(string, []byte, []string) int {
	*s.handed++
	return 0
}
func (s absentSink) Direct(string, string, []byte) int {
	*s.handed++
	return 0
}
func (s absentSink) DirectUser(string, string, []byte, []string) int {
	*s.handed++
	return 0
}
func (s absentSink) Room(string, string, []byte, []string) int {
	*s.handed++
	return 0
}

// published records what the downlink publishes to backends.
type published struct{ payloads []string }

func (p *published) Publish(_ string, payload []byte) error {
	p.payloads = append(p.payloads, string(payload))
	return nil
}

// absentDownlink is a downlink whose sink has no client, counting in
// handed the frames handed to it.
func absentDownlink(tb testing.TB, handed *int, pub Publisher, m *metrics.Metrics) *Downlink {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	tb.Cleanup(func() { rdb.Close() })
	return New(rdb, oneService{}, absentSink{handed: handed}, pub, Config{
		Channels: protocol.NewChannels("dmb"), NodeID: "n", Metrics: m,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// A node with no client of a service builds no frame for its messages,
// and still acks each with delivered 0; a direct to a cid counts as
// unknown_client, as the broker would count it.
func TestNoFrameIsBuiltForAServiceWithNoClientHere(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry())
	handed := 0
	pub := &published{}
	d := absentDownlink(t, &handed, pub, m)
	for _, payload := range []string{
		`{"type":"broadcast","data":"x","id":1}`,
		`{"type":"direct","cid":"c1","data":"x","id":2}`,
		`{"type":"direct","user":"u1","data":"x","id":3}`,
		`{"type":"room","room":"r","data":"x","id":4}`,
	} {
		d.Handle(context.Background(), "dmb:42", []byte(payload))
	}
	if handed != 0 {
		t.Errorf("%d frames handed to a sink with no client", handed)
	}
	if len(pub.payloads) != 4 {
		t.Fatalf("published %q, want 4 acks", pub.payloads)
	}
	for _, p := range pub.payloads {
		if !strings.Contains(p, `"type":"bk_message_ack"`) || !strings.Contains(p, `"delivered":0`) {
			t.Errorf("published %s, want an ack with delivered 0", p)
		}
	}
	var c dto.Metric
	if err := m.Drops.WithLabelValues(metrics.DropUnknownClient).Write(&c); err != nil {
		t.Fatal(err)
	}
	if n := c.GetCounter().GetValue(); n != 1 {
		t.Errorf("unknown_client drops %v, want 1 (the direct to a cid)", n)
	}
}

// BenchmarkHandleLargeBroadcastForNoClient is a 900 kB broadcast on a node
// with no client of its service: checked, acked, and (no more) framed.
func BenchmarkHandleLargeBroadcastForNoClient(b *testing.B) {
	handed := 0
	d := absentDownlink(b, &handed, nowhere{}, metrics.New(prometheus.NewRegistry()))
	payload := []byte(`{"type":"broadcast","id":1,"data":"` + strings.Repeat("x", 900<<10) + `"}`)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		d.Handle(context.Background(), "dmb:42", payload)
	}
}
