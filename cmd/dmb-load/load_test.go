package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

// target is a real redis-server and an in-process DMB node on it.
type target struct {
	dmb, metrics, redis string
}

func startTarget(t *testing.T) target {
	t.Helper()
	rs := redistest.Start(t)
	cfg := nodetest.Config(t, rs)
	cfg.ClientRate, cfg.BackendRate = 0, 0 // the uplink scenarios send as fast as they can
	n := nodetest.Start(t, cfg, node.Options{})
	return target{
		dmb:     "ws://" + n.Addr().String(),
		metrics: n.URL("/metrics"),
		redis:   rs.Addr(),
	}
}

// options returns the options of a small, short run against the target.
func (tg target) options(scenario string, clients int, d time.Duration) options {
	o := defaultOptions()
	o.DMB, o.Metrics, o.Redis = tg.dmb, tg.metrics, tg.redis
	o.Scenario, o.Clients, o.Duration = scenario, clients, d
	return o
}

func runOK(t *testing.T, o options) *report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var progress nodetest.Buffer
	rep, err := run(ctx, o, &progress)
	if err != nil {
		t.Fatalf("run %s: %v\n%s", o.Scenario, err, progress.String())
	}
	c := rep.Results.Connect
	if c.Connected != o.Clients || c.Failed != 0 {
		t.Fatalf("connected %d of %d, failures %v", c.Connected, o.Clients, c.Failures)
	}
	if rep.Server.MetricsError != "" {
		t.Fatalf("metrics: %s", rep.Server.MetricsError)
	}
	if t.Failed() || testing.Verbose() {
		var table bytes.Buffer
		writeTable(&table, rep)
		t.Logf("\n%s", table.String())
	}
	return rep
}

func TestIdleHoldsEveryConnectionAndReportsJSON(t *testing.T) {
	tg := startTarget(t)
	var stdout, stderr bytes.Buffer
	args := []string{
		"-dmb", tg.dmb, "-metrics", tg.metrics, "-redis", tg.redis,
		"-scenario", "idle", "-clients", "50", "-duration", "1s", "-inflight", "8", "-sources", "3",
		"-json", "-",
	}
	if err := mainErr(args, &stdout, &stderr); err != nil {
		t.Fatalf("dmb-load %v: %v\n%s", args, err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "dmb-load idle") {
		t.Errorf("no table on stderr:\n%s", stderr.String())
	}
	var got struct {
		Scenario string `json:"scenario"`
		Params   struct {
			Clients  int `json:"clients"`
			Sources  int `json:"sources"`
			Inflight int `json:"inflight"`
		} `json:"params"`
		Results struct {
			Connect struct {
				Connected        int            `json:"connected"`
				Failed           int            `json:"failed"`
				PerSecond        float64        `json:"per_second"`
				HandshakeLatency latencySummary `json:"handshake_latency_us"`
			} `json:"connect"`
			HeldSeconds       *float64 `json:"held_seconds"`
			Dropped           *int     `json:"dropped"`
			RSSPerConn        *float64 `json:"rss_per_conn_bytes"`
			HeapInusePerConn  *float64 `json:"heap_inuse_per_conn_bytes"`
			GoroutinesPerConn *float64 `json:"goroutines_per_conn"`
		} `json:"results"`
		Server struct {
			RSSBefore        float64  `json:"rss_before"`
			RSSAfter         float64  `json:"rss_after"`
			CPUSeconds       *float64 `json:"cpu_seconds"`
			ConnectionsAfter float64  `json:"connections_after"`
		} `json:"server"`
		Machine struct {
			CPUs int    `json:"cpus"`
			Go   string `json:"go"`
			OS   string `json:"os"`
		} `json:"machine"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, stdout.String())
	}
	r := got.Results
	switch {
	case got.Scenario != "idle" || got.Params.Clients != 50 || got.Params.Sources != 3 || got.Params.Inflight != 8:
		t.Errorf("scenario and params = %q %+v", got.Scenario, got.Params)
	case r.Connect.Connected != 50 || r.Connect.Failed != 0 || r.Connect.PerSecond <= 0:
		t.Errorf("connect = %+v", r.Connect)
	case r.Connect.HandshakeLatency.Count != 50 || r.Connect.HandshakeLatency.P50 <= 0 || r.Connect.HandshakeLatency.P999 < r.Connect.HandshakeLatency.P50:
		t.Errorf("handshake latency = %+v", r.Connect.HandshakeLatency)
	case r.HeldSeconds == nil || *r.HeldSeconds < 1 || r.Dropped == nil || *r.Dropped != 0:
		t.Errorf("held %v s, dropped %v", r.HeldSeconds, r.Dropped)
	case r.RSSPerConn == nil || r.HeapInusePerConn == nil || r.GoroutinesPerConn == nil:
		t.Errorf("per-connection figures missing: %s", stdout.String())
	case got.Server.RSSBefore <= 0 || got.Server.RSSAfter <= 0 || got.Server.CPUSeconds == nil:
		t.Errorf("server = %+v", got.Server)
	case got.Server.ConnectionsAfter != 50:
		t.Errorf("DMB counted %v connections at the end of the hold, want 50", got.Server.ConnectionsAfter)
	case got.Machine.CPUs <= 0 || got.Machine.Go == "" || got.Machine.OS == "":
		t.Errorf("machine = %+v", got.Machine)
	}
	// DMB's goroutines per connection are at least the reader and writer.
	if g := *r.GoroutinesPerConn; g < 1 {
		t.Errorf("goroutines per connection = %v", g)
	}
}

func TestBroadcastDeliversEveryMessageToEveryClientInOrder(t *testing.T) {
	rep := runOK(t, startTarget(t).options(scenarioBroadcast, 50, time.Second))
	r := rep.Results.downlinkResult
	switch {
	case r == nil:
		t.Fatal("no broadcast results")
	case r.Sent == 0:
		t.Fatal("nothing sent")
	case r.Expected != r.Sent*50 || r.Received != r.Expected || r.Lost != 0:
		t.Errorf("sent %d, expected %d, received %d, lost %d", r.Sent, r.Expected, r.Received, r.Lost)
	case r.Reordered != 0 || r.Duplicates != 0 || r.Undecoded != 0:
		t.Errorf("reordered %d, duplicates %d, undecoded %d", r.Reordered, r.Duplicates, r.Undecoded)
	case r.Dropped != 0 || r.PublishedToNobody != 0 || r.PublishError != "":
		t.Errorf("dropped %d %v, published to nobody %d, error %q", r.Dropped, r.DropCodes, r.PublishedToNobody, r.PublishError)
	case r.Latency.Count != uint64(r.Received) || r.Latency.P50 <= 0:
		t.Errorf("latency = %+v for %d received", r.Latency, r.Received)
	case r.ServerDeliveries != float64(r.Received):
		t.Errorf("DMB counted %v deliveries, the clients received %d", r.ServerDeliveries, r.Received)
	case r.DeliveriesPerSecond <= 0:
		t.Errorf("deliveries/s = %v", r.DeliveriesPerSecond)
	}
	if rep.Server.CPUSeconds <= 0 || r.DeliveriesPerServerCPUSecond <= 0 {
		t.Errorf("server cpu %v s, deliveries per cpu-second %v", rep.Server.CPUSeconds, r.DeliveriesPerServerCPUSecond)
	}
}

func TestBroadcastKeepsTheRate(t *testing.T) {
	o := startTarget(t).options(scenarioBroadcast, 10, time.Second)
	o.Rate = 100
	r := runOK(t, o).Results.downlinkResult
	if r.Sent < 90 || r.Sent > 100 {
		t.Errorf("sent %d messages in 1 s at 100/s", r.Sent)
	}
	if r.Lost != 0 || r.Reordered != 0 || r.Received != r.Sent*10 {
		t.Errorf("sent %d, received %d, lost %d, reordered %d", r.Sent, r.Received, r.Lost, r.Reordered)
	}
}

func TestDirectDeliversEveryMessageInOrder(t *testing.T) {
	rep := runOK(t, startTarget(t).options(scenarioDirect, 50, time.Second))
	r := rep.Results.downlinkResult
	switch {
	case r == nil:
		t.Fatal("no direct results")
	case r.Sent == 0:
		t.Fatal("nothing sent")
	case r.Expected != r.Sent || r.Received != r.Sent || r.Lost != 0:
		t.Errorf("sent %d, expected %d, received %d, lost %d", r.Sent, r.Expected, r.Received, r.Lost)
	case r.Reordered != 0 || r.Duplicates != 0 || r.Undecoded != 0:
		t.Errorf("reordered %d, duplicates %d, undecoded %d", r.Reordered, r.Duplicates, r.Undecoded)
	case r.Dropped != 0 || r.PublishedToNobody != 0:
		t.Errorf("dropped %d %v, published to nobody %d", r.Dropped, r.DropCodes, r.PublishedToNobody)
	case r.ServerDeliveries != float64(r.Received):
		t.Errorf("DMB counted %v deliveries, the clients received %d", r.ServerDeliveries, r.Received)
	}
}

func TestUplinkAckedEqualsBackendReceived(t *testing.T) {
	rep := runOK(t, startTarget(t).options(scenarioUplink, 50, time.Second))
	r := rep.Results.uplinkResult
	switch {
	case r == nil:
		t.Fatal("no uplink results")
	case r.Sent <= 4*50*16: // a closed loop that stopped sending again sends one window per client
		t.Fatalf("sent %d: the clients did not keep their windows full", r.Sent)
	case r.Acked != r.Sent || r.Errors != 0 || r.Unanswered != 0:
		t.Errorf("sent %d, acked %d, errors %d, unanswered %d", r.Sent, r.Acked, r.Errors, r.Unanswered)
	case r.BackendReceived != r.Acked:
		t.Errorf("backend received %d, acked %d", r.BackendReceived, r.Acked)
	case r.BackendReordered != 0 || r.StrayErrors != 0 || r.Undecoded != 0 || r.Dropped != 0:
		t.Errorf("backend out of order %d, stray errors %d, undecoded %d, dropped %d", r.BackendReordered, r.StrayErrors, r.Undecoded, r.Dropped)
	case r.AckLatency.Count != uint64(r.Acked) || r.BackendLatency.Count != uint64(r.BackendReceived):
		t.Errorf("ack latency %+v, backend latency %+v", r.AckLatency, r.BackendLatency)
	case r.MessagesPerServerCPUSecond <= 0:
		t.Errorf("messages per server cpu-second = %v", r.MessagesPerServerCPUSecond)
	}
}

func TestUplinkKeepsTheRatePerClient(t *testing.T) {
	o := startTarget(t).options(scenarioUplink, 10, time.Second)
	o.Rate = 20
	r := runOK(t, o).Results.uplinkResult
	if r.Sent < 180 || r.Sent > 200 {
		t.Errorf("sent %d frames in 1 s from 10 clients at 20/s", r.Sent)
	}
	if r.Acked != r.Sent || r.BackendReceived != r.Acked {
		t.Errorf("sent %d, acked %d, backend received %d", r.Sent, r.Acked, r.BackendReceived)
	}
}

func TestUplinkSpreadOverBackendsReachesThemAllInOrder(t *testing.T) {
	o := startTarget(t).options(scenarioUplink, 30, time.Second)
	o.Backends = 3
	rep := runOK(t, o)
	r := rep.Results.uplinkResult
	switch {
	case r.Sent == 0 || r.Acked != r.Sent || r.Errors != 0:
		t.Errorf("sent %d, acked %d, errors %d", r.Sent, r.Acked, r.Errors)
	case r.BackendReceived != r.Acked || r.BackendReordered != 0 || r.BackendUndecoded != 0:
		t.Errorf("backends received %d of %d acked, out of order %d, undecoded %d", r.BackendReceived, r.Acked, r.BackendReordered, r.BackendUndecoded)
	case len(r.BackendReceivedEach) != 3:
		t.Fatalf("received per backend = %v, want 3 figures", r.BackendReceivedEach)
	case rep.Params.Backends != 3:
		t.Errorf("params.backends = %d", rep.Params.Backends)
	}
	// DMB binds new clients to the live backends in turn.
	for i, n := range r.BackendReceivedEach {
		if n == 0 {
			t.Errorf("backend %d received nothing: %v", i+1, r.BackendReceivedEach)
		}
	}
}
