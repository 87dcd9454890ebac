package uplink_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/uplink"
)

// A client's message passes the connects of other clients queued before
// it, and each client's own requests keep their order. A thousand clients
// that connect or leave at once used to stand, a few Redis commands each,
// between every connected client's message and its backend: here it
// reached the backend after all 2,000.
func TestAMessagePassesOtherClientsConnects(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch := protocol.NewChannels("dmb")
	ps := rdb.Subscribe(ctx, ch.Uplink("1")) // the backend
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	events := ps.Channel()
	up := uplink.New(rdb, oneBackend{}, uplink.Config{
		Channels: ch, Workers: 1, Metrics: metrics.New(prometheus.NewRegistry()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})

	type event struct {
		Type string `json:"type"`
		CID  string `json:"cid"`
	}
	next := func() event {
		t.Helper()
		select {
		case m := <-events:
			var e event
			if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
				t.Fatalf("backend got %q: %v", m.Payload, err)
			}
			return e
		case <-ctx.Done():
			t.Fatal("the backend waited too long for the next event")
			return event{}
		}
	}

	// Everything is queued before the worker runs, so that what it passes
	// does not depend on how fast it publishes meanwhile.
	honest := &benchClient{cid: "honest"}
	if err := up.Connect(honest); err != nil {
		t.Fatal(err)
	}
	const crowd = 2000
	for i := range crowd {
		if err := up.Connect(&benchClient{cid: "crowd" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	late := &benchClient{cid: "late"}
	data := json.RawMessage(`{"n":1}`)
	for _, err := range []error{
		up.Connect(late),
		up.Message(ctx, late, data, json.RawMessage(`1`), false),
		up.Disconnect(late, 1000, "", false),
		up.Message(ctx, honest, data, json.RawMessage(`2`), false),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- up.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()

	if e := next(); e.Type != protocol.TypeClientConnected || e.CID != "honest" {
		t.Fatalf("first event %+v, want honest's client_connected", e)
	}
	before := -1 // crowd connects the backend got before honest's message
	var lates []string
	for connects := 0; before < 0 || len(lates) < 3; {
		switch e := next(); {
		case e.CID == "honest":
			if e.Type != protocol.TypeMessage {
				t.Fatalf("honest's %s, want its message", e.Type)
			}
			before = connects
		case e.CID == "late":
			lates = append(lates, e.Type)
		case e.Type == protocol.TypeClientConnected:
			connects++
		default:
			t.Fatalf("unexpected %+v", e)
		}
	}
	if before > 64 { // the connects a pipeline takes
		t.Errorf("honest's message reached its backend after %d of the %d connects queued before it", before, crowd)
	}
	if want := []string{protocol.TypeClientConnected, protocol.TypeMessage, protocol.TypeClientDisconnected}; !slices.Equal(lates, want) {
		t.Errorf("a client queued behind the crowd had %v, want %v", lates, want)
	}
}
