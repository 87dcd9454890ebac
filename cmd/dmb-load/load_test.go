package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

// target is a real redis-server and an in-process DMB node on it.
type target struct {
	dmb, metrics, redis string
	tcp                 string // the node's TCP address, when TCP clients are on
}

func startTarget(t *testing.T) target { return startTargetWith(t, nil) }

// startTargetWith starts a target whose node's configuration change
// alters, after the tests' defaults.
func startTargetWith(t *testing.T, change func(*config.Config)) target {
	t.Helper()
	rs := redistest.Start(t)
	cfg := nodetest.Config(t, rs)
	cfg.ClientRate, cfg.BackendRate = 0, 0 // the uplink scenarios send as fast as they can
	if change != nil {
		change(&cfg)
	}
	n := nodetest.Start(t, cfg, node.Options{})
	tg := target{
		dmb:     "ws://" + n.Addr().String(),
		metrics: n.URL("/metrics"),
		redis:   rs.Addr(),
	}
	if a := n.TCPAddr(); a != nil {
		tg.tcp = a.String()
	}
	return tg
}

// withTCP turns the node's TCP clients on, on a free port.
func withTCP(t *testing.T) func(*config.Config) {
	port := redistest.FreePort(t)
	return func(c *config.Config) { c.TCPPort = port }
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

// TestOverTCPBroadcastAndUplinkLoseNothing runs broadcast and uplink with
// TCP clients, one JSON frame per line, on a node that serves them.
func TestOverTCPBroadcastAndUplinkLoseNothing(t *testing.T) {
	tg := startTargetWith(t, withTCP(t))
	if tg.tcp == "" {
		t.Fatal("the node serves no TCP clients")
	}
	testTransportLosesNothing(t, tg, transportTCP, []transportRun{
		{scenarioBroadcast, 0}, {scenarioBroadcast, 200}, {scenarioUplink, 0}, {scenarioUplink, 50},
	})
}

// TestOverSSEEveryScenarioLosesNothing runs the scenarios with clients
// over the HTTP fallback: an event stream down, POSTs up.
func TestOverSSEEveryScenarioLosesNothing(t *testing.T) {
	testTransportLosesNothing(t, startTarget(t), transportSSE, []transportRun{
		{scenarioIdle, 0}, {scenarioBroadcast, 0}, {scenarioBroadcast, 200}, {scenarioDirect, 0},
		{scenarioRoom, 0}, {scenarioUplink, 0}, {scenarioUplink, 50},
	})
}

// transportRun is one run of testTransportLosesNothing.
type transportRun struct {
	scenario string
	rate     float64
}

// testTransportLosesNothing runs each scenario with clients over transport
// and checks that nothing was lost, reordered, duplicated or dropped, and
// that DMB's figures agree with the clients'.
func testTransportLosesNothing(t *testing.T, tg target, transport string, runs []transportRun) {
	t.Helper()
	const clients = 40
	for _, tc := range runs {
		o := tg.options(tc.scenario, clients, time.Second)
		o.Transport, o.Rate = transport, tc.rate
		if transport == transportTCP {
			o.TCP = tg.tcp
		}
		if tc.scenario == scenarioRoom {
			o.Rooms = 7
		}
		rep := runOK(t, o)
		if rep.Params.Transport != transport || rep.Params.TCP != o.TCP {
			t.Errorf("params say transport %q to %q", rep.Params.Transport, rep.Params.TCP)
		}
		if tc.scenario == scenarioIdle {
			if r := rep.Results.idleResult; r == nil || r.Dropped != 0 || rep.Server.ConnectionsAfter != clients {
				t.Errorf("idle: %+v, DMB counted %v connections at the end, want %d", r, rep.Server.ConnectionsAfter, clients)
			}
			continue
		}
		if d := rep.Results.downlinkResult; d != nil {
			expected := d.Sent * clients
			switch tc.scenario {
			case scenarioDirect:
				expected = d.Sent
			case scenarioRoom:
				expected = d.Expected // each message times its room's members
				if d.Joins == nil || d.Joins.Joined != clients {
					t.Errorf("room: joins %+v", d.Joins)
				}
			}
			switch {
			case d.Sent == 0:
				t.Errorf("%s rate %v: nothing sent", tc.scenario, tc.rate)
			case d.Expected != expected || d.Received != d.Expected || d.Lost != 0:
				t.Errorf("%s rate %v: sent %d, expected %d, received %d, lost %d", tc.scenario, tc.rate, d.Sent, d.Expected, d.Received, d.Lost)
			case d.Reordered != 0 || d.Duplicates != 0 || d.Undecoded != 0:
				t.Errorf("%s rate %v: reordered %d, duplicates %d, undecoded %d", tc.scenario, tc.rate, d.Reordered, d.Duplicates, d.Undecoded)
			case d.Dropped != 0 || d.PublishedToNobody != 0 || d.PublishError != "":
				t.Errorf("%s rate %v: dropped %d %v, published to nobody %d, error %q", tc.scenario, tc.rate, d.Dropped, d.DropCodes, d.PublishedToNobody, d.PublishError)
			case d.ServerDeliveries != float64(d.Received):
				t.Errorf("%s rate %v: DMB counted %v deliveries, the clients received %d", tc.scenario, tc.rate, d.ServerDeliveries, d.Received)
			case d.DeliveriesPerServerCPUSecond <= 0:
				t.Errorf("%s rate %v: deliveries per DMB CPU-second %v", tc.scenario, tc.rate, d.DeliveriesPerServerCPUSecond)
			}
			continue
		}
		u := rep.Results.uplinkResult
		switch {
		case u == nil:
			t.Fatalf("%s: no results", tc.scenario)
		case u.Sent == 0 || u.Acked != u.Sent || u.Errors != 0 || u.Unanswered != 0:
			t.Errorf("uplink rate %v: sent %d, acked %d, errors %d, unanswered %d", tc.rate, u.Sent, u.Acked, u.Errors, u.Unanswered)
		case u.BackendReceived != u.Acked:
			t.Errorf("uplink rate %v: backend received %d, acked %d", tc.rate, u.BackendReceived, u.Acked)
		case u.BackendReordered != 0 || u.StrayErrors != 0 || u.Undecoded != 0 || u.Dropped != 0:
			t.Errorf("uplink rate %v: backend out of order %d, stray errors %d, undecoded %d, dropped %d", tc.rate, u.BackendReordered, u.StrayErrors, u.Undecoded, u.Dropped)
		case u.AckLatency.Count != uint64(u.Acked):
			t.Errorf("uplink rate %v: ack latency %+v for %d acked", tc.rate, u.AckLatency, u.Acked)
		case u.MessagesPerServerCPUSecond <= 0:
			t.Errorf("uplink rate %v: messages per DMB CPU-second %v", tc.rate, u.MessagesPerServerCPUSecond)
		}
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

// floodRun is what the flood tests read of the JSON report.
type floodRun struct {
	Params struct {
		Sources int `json:"sources"`
	} `json:"params"`
	Results honestResults `json:"results"`
	Flood   *floodReport  `json:"flood"`
	Attack  *attackReport `json:"attack"`
}

// honestResults is what the flood tests read of the honest clients'
// figures.
type honestResults struct {
	Sent             int64          `json:"sent"`
	Acked            int64          `json:"acked"`
	Errors           int64          `json:"errors"`
	BackendReceived  int64          `json:"backend_received"`
	BackendReordered int64          `json:"backend_reordered"`
	BackendUndecoded int64          `json:"backend_undecoded"`
	Dropped          int            `json:"dropped"`
	DropCodes        map[string]int `json:"drop_codes"`
}

// lostNothing checks that the honest clients lost nothing: every message
// acked and received by the backend, in order, and none of them dropped.
func (r honestResults) lostNothing(t *testing.T) {
	t.Helper()
	switch {
	case r.Sent == 0 || r.Acked != r.Sent || r.Errors != 0:
		t.Errorf("honest sent %d, acked %d, errors %d", r.Sent, r.Acked, r.Errors)
	case r.BackendReceived != r.Acked || r.BackendReordered != 0 || r.BackendUndecoded != 0:
		t.Errorf("backend received %d of %d acked, out of order %d, undecoded %d", r.BackendReceived, r.Acked, r.BackendReordered, r.BackendUndecoded)
	case r.Dropped != 0:
		t.Errorf("honest clients dropped: %d %v", r.Dropped, r.DropCodes)
	}
}

// runFlood runs dmb-load with args against tg and returns its JSON report
// and its table.
func runFlood(t *testing.T, tg target, args ...string) (floodRun, string) {
	t.Helper()
	args = append([]string{"-dmb", tg.dmb, "-metrics", tg.metrics, "-redis", tg.redis, "-json", "-"}, args...)
	var stdout, stderr bytes.Buffer
	if err := mainErr(args, &stdout, &stderr); err != nil {
		t.Fatalf("dmb-load %v: %v\n%s", args, err, stderr.String())
	}
	var got floodRun
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, stdout.String())
	}
	if got.Flood == nil && got.Attack == nil {
		t.Fatalf("no flood or attack section:\n%s", stdout.String())
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("\n%s", stderr.String())
	}
	return got, stderr.String()
}

func TestFloodIsClosedByTheClientRateWhileHonestClientsLoseNothing(t *testing.T) {
	tg := startTargetWith(t, func(c *config.Config) {
		c.ClientRate, c.ClientBurst, c.ClientErrorLimit = 20, 20, 3
	})
	// A connection is read at its rate in its first second, so a flood
	// session lasts over a second: 3 s give each flooder a few.
	got, table := runFlood(t, tg, "-scenario", "uplink", "-clients", "3", "-rate", "5", "-duration", "3s", "-flood", "2")
	f, r := got.Flood, got.Results
	switch {
	case f.Connections != 2 || f.ReconnectEvery != 0 || f.Source != "127.0.0.2" || got.Params.Sources != 1:
		t.Errorf("flood %d connections from %s, reconnect every %d; clients from %d address(es)", f.Connections, f.Source, f.ReconnectEvery, got.Params.Sources)
	case f.FramesSent <= 0 || f.FramesPerSecond <= 0 || f.Seconds <= 0:
		t.Errorf("flood sent %d frames in %v s (%v/s)", f.FramesSent, f.Seconds, f.FramesPerSecond)
	case f.ClosesByCode["1008"]+f.ClosesByCode["1006"] == 0:
		t.Errorf("no flood connection closed: closes %v", f.ClosesByCode)
	case metricOf(t, tg.metrics, `dmb_disconnects_total{code="1008"}`) == 0:
		// The node closes a flooder with 1008; one that floods on while
		// its close waits is dropped, and may see 1006 only.
		t.Errorf("the node closed no flood connection with 1008: closes seen %v", f.ClosesByCode)
	case metricOf(t, tg.metrics, `dmb_drops_total{reason="rate_limited"}`) == 0:
		// The answers may be lost with the flooder's dropped connection.
		t.Errorf("the node answered no flood frame rate limited: errors seen %v", f.Errors)
	case f.Sessions <= 2 || f.ConnectionsOpened < f.Sessions+f.HandshakesRefused:
		// closed at once, each flooder connected again
		t.Errorf("%d connections opened, %d sessions, %d refused", f.ConnectionsOpened, f.Sessions, f.HandshakesRefused)
	case f.BackendReceived <= 0: // the acks may never come: the close goes first
		t.Errorf("the backend received no flood message: the burst of each connection passes")
	}
	// The honest clients, under the rate, lose nothing, and the backend
	// tells the flood's messages apart from theirs.
	r.lostNothing(t)
	// Closes by code in the table; a flooder that floods on while its
	// close waits is dropped without one (1006).
	for _, want := range []string{"flood conns", "flood closes"} {
		if !strings.Contains(table, want) {
			t.Errorf("the table has no %q:\n%s", want, table)
		}
	}
}

// Each attack runs, from the flooders' address, and is met by its bound on
// the node (counted), while the honest clients lose nothing. The node's
// bounds are small here, so that each is reached within a short run.
func TestAttacksAreMetByTheirBoundsWhileHonestClientsLoseNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("every attack takes a while")
	}
	tg := startTargetWith(t, func(c *config.Config) {
		c.HandshakeTimeout, c.FrameTimeout = time.Second, time.Second
		c.SendQueueBytes, c.MaxBackendBytes, c.ClientSendBuffer = 1<<20, 512<<10, 64<<10
	})
	for _, tc := range []struct {
		kind, what string
		counts     []string // what the attack counted, each above 0
		series     string   // the node's count of the bound met
	}{
		{attackSlow, "slow clients closed for their queue's bytes", []string{"connections"}, `dmb_drops_total{reason="slow_consumer_bytes"}`},
		{attackBig, "payloads over DMB_MAX_BACKEND_BYTES dropped", []string{"broadcasts"}, `dmb_drops_total{reason="too_large"}`},
		{attackTrickle, "trickled requests and half frames cut (the half frames' sessions 1006)", []string{"requests_cut", "half_frames_cut"}, `dmb_disconnects_total{code="1006"}`},
		{attackUnknown, "publishes to unknown bkids dropped", []string{"publishes"}, `dmb_drops_total{reason="unknown_bkid"}`},
		{attackRefused, "handshakes for a service nobody serves refused", []string{"handshakes"}, `dmb_refusals_total{code="4004"}`},
		{attackRegister, "bk_connect for new services answered", []string{"requests"}, `dmb_registrations_total{result="acked"}`},
		{attackBulk, "broadcasts to no client handled", []string{"broadcasts"}, `dmb_messages_in_total{kind="broadcast"}`},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			met := func() float64 { return metricOf(t, tg.metrics, tc.series) }
			before := met()
			got, table := runFlood(t, tg, "-scenario", "uplink", "-clients", "3", "-rate", "5", "-duration", "2s", "-attack", tc.kind)
			a, r := got.Attack, got.Results
			if a == nil || !slices.Equal(a.Kinds, []string{tc.kind}) || a.Source != "127.0.0.2" || a.Seconds <= 0 {
				t.Fatalf("attack section %+v", a)
			}
			for _, what := range tc.counts {
				if a.Counts[tc.kind][what] == 0 {
					t.Errorf("%s: no %s in %v", tc.what, what, a.Counts[tc.kind])
				}
			}
			// What the node counts may come after the run's end (a
			// downlink that fell behind drains).
			nodetest.Eventually(t, tc.what, func() bool { return met() > before })
			r.lostNothing(t)
			if !strings.Contains(table, "  "+tc.kind) {
				t.Errorf("the table has no row of %s:\n%s", tc.kind, table)
			}
		})
	}
}

func TestFloodReconnectsAfterEvery200Frames(t *testing.T) {
	tg := startTarget(t) // no client rate: only the flooders close their connections
	got, _ := runFlood(t, tg, "-scenario", "uplink", "-clients", "2", "-rate", "20", "-duration", "500ms", "-flood", "2", "-flood-reconnect")
	f, r := got.Flood, got.Results
	// Each connection the flooders closed sent its 200 frames, but those
	// the end of the run closed.
	switch {
	case f.ReconnectEvery != floodReconnectEvery:
		t.Errorf("reconnect every %d", f.ReconnectEvery)
	case f.ClosedByFlooder <= 2:
		t.Fatalf("the flooders closed %d connections: they did not reconnect (frames %d, sessions %d)", f.ClosedByFlooder, f.FramesSent, f.Sessions)
	case f.FramesSent < floodReconnectEvery*(f.ClosedByFlooder-2) || f.FramesSent > floodReconnectEvery*f.Sessions:
		t.Errorf("%d frames sent in %d sessions, %d closed by the flooders", f.FramesSent, f.Sessions, f.ClosedByFlooder)
	case f.Sessions < f.ClosedByFlooder || f.HandshakesRefused != 0 || len(f.ClosesByCode) != 0 || len(f.DialErrors) != 0:
		t.Errorf("sessions %d, refused %d %v, closes %v, dial errors %v", f.Sessions, f.HandshakesRefused, f.Refusals, f.ClosesByCode, f.DialErrors)
	case len(f.Errors) != 0:
		t.Errorf("errors answered without a rate limit: %v", f.Errors)
	}
	if r.Sent == 0 || r.Acked != r.Sent || r.BackendReceived != r.Acked {
		t.Errorf("honest sent %d, acked %d, backend received %d", r.Sent, r.Acked, r.BackendReceived)
	}
}

func TestRoomJoinsEveryClientAndDeliversToTheMembersInOrder(t *testing.T) {
	o := startTarget(t).options(scenarioRoom, 30, time.Second)
	o.Rooms = 7 // rooms of 4 and 5 members
	rep := runOK(t, o)
	r := rep.Results.downlinkResult
	if r == nil || r.Joins == nil {
		t.Fatal("no room results")
	}
	if j := r.Joins; j.Joined != 30 || j.Joins != 30 || j.Rooms != 7 || j.PerSecond <= 0 {
		t.Fatalf("joins %+v, want 30 clients joined to 7 rooms", *j)
	}
	if r.Sent == 0 || r.Received != r.Expected || r.Lost != 0 || r.Reordered != 0 || r.Duplicates != 0 || r.Undecoded != 0 {
		t.Fatalf("room messages: %+v", r)
	}
	// Each message reaches its room only: 30 clients over 7 rooms.
	if r.Expected > r.Sent*5 || r.Expected < r.Sent*4 {
		t.Fatalf("%d deliveries expected of %d room messages, want 4 to 5 each", r.Expected, r.Sent)
	}
}

func TestRecoverableBroadcastCarriesOffsetsAndLivePublishNone(t *testing.T) {
	tg := startTarget(t)
	for _, recoverable := range []bool{true, false} {
		o := tg.options(scenarioBroadcast, 20, 500*time.Millisecond)
		o.Rate, o.Recoverable = 200, recoverable
		rep := runOK(t, o)
		r := rep.Results.downlinkResult
		switch {
		case !rep.Params.Recoverable != !recoverable:
			t.Errorf("recoverable %v: params say %v", recoverable, rep.Params.Recoverable)
		case r.Sent == 0 || r.Received != r.Sent*20 || r.Lost != 0 || r.Reordered != 0 || r.Duplicates != 0 || r.Undecoded != 0:
			t.Errorf("recoverable %v: %+v", recoverable, r)
		case recoverable && r.WithOffset != r.Received:
			t.Errorf("recoverable: %d of %d frames carried an offset", r.WithOffset, r.Received)
		case !recoverable && r.WithOffset != 0:
			t.Errorf("live-only: %d frames carried an offset", r.WithOffset)
		case r.PublishedToNobody != 0 || r.PublishError != "":
			t.Errorf("recoverable %v: published to nobody %d, error %q", recoverable, r.PublishedToNobody, r.PublishError)
		}
	}
}

// TestResumeAcrossADrainLosesNothing runs the resume scenario on two real
// nodes of one Redis: half the clients are on the node that drains, and
// each of them takes its session up on the other with every message, once
// and in order.
func TestResumeAcrossADrainLosesNothing(t *testing.T) { testResumeAcrossADrain(t, transportWebSocket) }

// TestResumeOverTCPAcrossADrainLosesNothing is the same with TCP clients,
// whose hello carries the resume.
func TestResumeOverTCPAcrossADrainLosesNothing(t *testing.T) { testResumeAcrossADrain(t, transportTCP) }

// TestResumeOverSSEAcrossADrainLosesNothing is the same with clients over
// the HTTP fallback, whose stream's query carries the resume.
func TestResumeOverSSEAcrossADrainLosesNothing(t *testing.T) { testResumeAcrossADrain(t, transportSSE) }

func testResumeAcrossADrain(t *testing.T, transport string) {
	rs := redistest.Start(t)
	start := func(admin bool) *nodetest.Node {
		cfg := nodetest.Config(t, rs)
		cfg.ClientRate = 0
		if admin {
			cfg.AdminAddr = "127.0.0.1:0"
		}
		if transport == transportTCP {
			withTCP(t)(&cfg)
		}
		return nodetest.Start(t, cfg, node.Options{})
	}
	a, b := start(true), start(false)
	const clients = 240
	o := defaultOptions()
	o.DMB = "ws://" + a.Addr().String() + ",ws://" + b.Addr().String()
	o.Transport = transport
	if transport == transportTCP {
		o.TCP = a.TCPAddr().String() + "," + b.TCPAddr().String()
	}
	o.Metrics = b.URL("/metrics") // the node that stays
	o.Redis = rs.Addr()
	o.Scenario, o.Clients, o.Duration, o.Rate = scenarioResume, clients, 3*time.Second, 50
	o.Drain, o.DrainAfter = "http://"+a.AdminAddr().String(), time.Second
	rep := runOK(t, o)
	r := rep.Results.downlinkResult
	if r == nil || r.Resume == nil {
		t.Fatal("no resume results")
	}
	res := r.Resume
	switch {
	case !rep.Params.Recoverable:
		t.Errorf("resume published live-only")
	case r.Sent < 140 || r.Expected != r.Sent*clients || res.ExpectedPerClient != r.Sent:
		t.Errorf("sent %d, expected %d (%d per client)", r.Sent, r.Expected, res.ExpectedPerClient)
	case r.Lost != 0 || r.Duplicates != 0 || r.Reordered != 0 || r.Undecoded != 0 || res.ClientsLosing != 0:
		t.Errorf("lost %d (%d clients), duplicates %d, reordered %d, undecoded %d", r.Lost, res.ClientsLosing, r.Duplicates, r.Reordered, r.Undecoded)
	case r.Received != r.Expected || r.WithOffset < r.Received:
		t.Errorf("received %d of %d, %d with an offset", r.Received, r.Expected, r.WithOffset)
	}
	switch d := res.Drain; {
	case d == nil || d.Status != 202 || d.Error != "":
		t.Fatalf("drain: %+v", d)
	case len(res.ClientsPerNode) != 2 || res.ClientsPerNode[0] != clients/2 || res.ClientsPerNode[1] != clients/2:
		t.Errorf("clients per node %v", res.ClientsPerNode)
	case res.ClientsDropped != clients/2 || res.Drops != clients/2 || res.DropCodes["1001"] != clients/2:
		t.Errorf("%d clients dropped, %d drops %v; want the drained node's %d with 1001", res.ClientsDropped, res.Drops, res.DropCodes, clients/2)
	case res.ClientsResumed != res.ClientsDropped || res.Resumes != res.Drops:
		t.Errorf("%d of %d dropped clients resumed, %d resumes", res.ClientsResumed, res.ClientsDropped, res.Resumes)
	case res.Unrecovered != 0 || res.FreshSessions != 0 || res.CIDChanged != 0 || res.Failed != 0:
		t.Errorf("unrecovered %d, fresh %d, cid changed %d, failed %d", res.Unrecovered, res.FreshSessions, res.CIDChanged, res.Failed)
	case res.ResumeLatency.Count != uint64(res.Resumes) || res.ResumeLatency.P50 <= 0:
		t.Errorf("resume latency %+v for %d resumes", res.ResumeLatency, res.Resumes)
	}
	// The drained node stopped by itself.
	if err := a.Wait(); err != nil {
		t.Errorf("drained node: %v", err)
	}
}

// metricOf reads one series of a node's /metrics, 0 when absent.
func metricOf(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("get %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
