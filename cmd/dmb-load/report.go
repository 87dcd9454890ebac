package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
)

// report is the result of one run, written as JSON with -json.
type report struct {
	Scenario  string          `json:"scenario"`
	Params    params          `json:"params"`
	Results   results         `json:"results"`
	Flood     *floodReport    `json:"flood,omitempty"`
	Attack    *attackReport   `json:"attack,omitempty"`
	Server    serverReport    `json:"server"`
	Generator generatorReport `json:"generator"`
	Redis     redisReport     `json:"redis"`
	Machine   machine         `json:"machine"`
}

type params struct {
	DMB             string  `json:"dmb"`
	Transport       string  `json:"transport"`     // websocket, tcp or sse
	TCP             string  `json:"tcp,omitempty"` // tcp: the nodes' TCP addresses
	Metrics         string  `json:"metrics"`
	Redis           string  `json:"redis"`
	Prefix          string  `json:"prefix"`
	Service         string  `json:"service"`
	Clients         int     `json:"clients"`
	Rate            float64 `json:"rate"`
	Window          int     `json:"window"`
	Duration        string  `json:"duration"`
	DurationSeconds float64 `json:"duration_seconds"`
	Payload         int     `json:"payload"`
	Inflight        int     `json:"inflight"`
	Sources         int     `json:"sources"`
	Backends        int     `json:"backends"`
	Recoverable     bool    `json:"recoverable"`
	Drain           string  `json:"drain,omitempty"`
	DrainAfter      string  `json:"drain_after,omitempty"`
}

// results holds the connect phase and the figures of the scenario that ran
// (one of the three pointers), which appear beside it in the JSON object.
type results struct {
	Connect connectResult `json:"connect"`
	*idleResult
	*downlinkResult
	*uplinkResult
}

// MarshalJSON writes {"connect":{...}, <the scenario's fields>}. The
// scenarios share field names, which embedding alone would drop.
func (r results) MarshalJSON() ([]byte, error) {
	out, err := json.Marshal(struct {
		Connect connectResult `json:"connect"`
	}{r.Connect})
	if err != nil {
		return nil, err
	}
	var part any
	switch {
	case r.idleResult != nil:
		part = r.idleResult
	case r.downlinkResult != nil:
		part = r.downlinkResult
	case r.uplinkResult != nil:
		part = r.uplinkResult
	default:
		return out, nil
	}
	b, err := json.Marshal(part)
	if err != nil {
		return nil, err
	}
	if len(b) <= 2 {
		return out, nil
	}
	out = append(out[:len(out)-1], ',')
	return append(out, b[1:]...), nil
}

type connectResult struct {
	Attempted          int            `json:"attempted"`
	Connected          int            `json:"connected"`
	Failed             int            `json:"failed"`
	Failures           map[string]int `json:"failures"`
	Seconds            float64        `json:"seconds"`
	PerSecond          float64        `json:"per_second"`
	HandshakeLatency   latencySummary `json:"handshake_latency_us"`
	ServerCPUSeconds   float64        `json:"server_cpu_seconds"`
	PerServerCPUSecond float64        `json:"per_server_cpu_second"`
}

type idleResult struct {
	HeldSeconds       float64        `json:"held_seconds"`
	Dropped           int            `json:"dropped"`
	DropCodes         map[string]int `json:"drop_codes"`
	RSSPerConn        float64        `json:"rss_per_conn_bytes"`
	HeapInusePerConn  float64        `json:"heap_inuse_per_conn_bytes"`
	GoroutinesPerConn float64        `json:"goroutines_per_conn"`
}

type downlinkResult struct {
	Sent                         int64          `json:"messages_sent"`
	SendRate                     float64        `json:"messages_per_second"`
	Expected                     int64          `json:"expected"`
	Received                     int64          `json:"received"`
	Lost                         int64          `json:"lost"`
	Reordered                    int64          `json:"reordered"`
	Duplicates                   int64          `json:"duplicates"`
	Undecoded                    int64          `json:"undecoded"`
	WithOffset                   int64          `json:"with_offset"` // data frames that carried an offset
	DeliveriesPerSecond          float64        `json:"deliveries_per_second"`
	Latency                      latencySummary `json:"latency_us"`
	WindowSeconds                float64        `json:"window_seconds"`
	DrainSeconds                 float64        `json:"drain_seconds"`
	WindowStalls                 int64          `json:"window_stalls"`
	MaxScheduleLagMS             float64        `json:"max_schedule_lag_ms"`
	PublishedToNobody            int64          `json:"published_to_nobody"`
	PublishError                 string         `json:"publish_error,omitempty"`
	Dropped                      int            `json:"dropped"`
	DropCodes                    map[string]int `json:"drop_codes"`
	ServerDeliveries             float64        `json:"server_deliveries"`
	DeliveriesPerServerCPUSecond float64        `json:"deliveries_per_server_cpu_second"`
	Joins                        *joinResult    `json:"joins,omitempty"`  // room
	Resume                       *resumeResult  `json:"resume,omitempty"` // resume
}

// joinResult is the room scenario's join storm: every client joined to
// its room by the backend, until each was told dmb:joined.
type joinResult struct {
	Rooms              int     `json:"rooms"`
	Joins              int64   `json:"joins"`
	Joined             int64   `json:"joined"`
	Seconds            float64 `json:"seconds"`
	PerSecond          float64 `json:"per_second"`
	ServerCPUSeconds   float64 `json:"server_cpu_seconds"`
	PerServerCPUSecond float64 `json:"per_server_cpu_second"`
}

type uplinkResult struct {
	Sent                       int64          `json:"sent"`
	Acked                      int64          `json:"acked"`
	Errors                     int64          `json:"errors"`
	Unanswered                 int64          `json:"unanswered"`
	StrayErrors                int64          `json:"stray_errors"`
	Undecoded                  int64          `json:"undecoded"`
	UntimedAcks                int64          `json:"untimed_acks"` // answers out of order: their send time was taken over
	AcksPerSecond              float64        `json:"acked_per_second"`
	AckLatency                 latencySummary `json:"ack_latency_us"`
	BackendReceived            int64          `json:"backend_received"`
	BackendReceivedEach        []int64        `json:"backend_received_each"`
	BackendReordered           int64          `json:"backend_reordered"`
	BackendUndecoded           int64          `json:"backend_undecoded"`
	BackendLatency             latencySummary `json:"backend_latency_us"`
	WindowSeconds              float64        `json:"window_seconds"`
	DrainSeconds               float64        `json:"drain_seconds"`
	Dropped                    int            `json:"dropped"`
	DropCodes                  map[string]int `json:"drop_codes"`
	MessagesPerServerCPUSecond float64        `json:"messages_per_server_cpu_second"`
}

// serverReport is DMB's side, from its /metrics. CPU figures cover the
// measured window (from the start of sending, or of the hold, until the
// last message in flight arrived); memory figures compare the moment before
// the connects with the end of that window.
type serverReport struct {
	RSSBefore        float64            `json:"rss_before"`
	RSSAfter         float64            `json:"rss_after"`
	HeapInuseBefore  float64            `json:"heap_inuse_before"`
	HeapInuseAfter   float64            `json:"heap_inuse_after"`
	GoroutinesBefore float64            `json:"goroutines_before"`
	GoroutinesAfter  float64            `json:"goroutines_after"`
	CPUSeconds       float64            `json:"cpu_seconds"`
	CPUWallSeconds   float64            `json:"cpu_wall_seconds"`
	CPUCores         float64            `json:"cpu_cores"`
	ConnectionsAfter float64            `json:"connections_after"`
	Drops            map[string]float64 `json:"drops"`
	Disconnects      map[string]float64 `json:"disconnects"`
	MetricsError     string             `json:"metrics_error,omitempty"`
}

// generatorReport is the generator's own CPU over the measured window.
type generatorReport struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUCores   float64 `json:"cpu_cores"`
}

// redisReport is Redis's CPU over the measured window (INFO cpu).
type redisReport struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUCores   float64 `json:"cpu_cores"`
	Error      string  `json:"error,omitempty"`
}

type machine struct {
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Go         string `json:"go"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
}

func newReport(o *options) *report {
	rep := &report{
		Scenario: o.Scenario,
		Params: params{
			DMB: o.DMB, Transport: o.Transport, TCP: o.TCP, Metrics: o.Metrics, Redis: o.Redis, Prefix: o.Prefix, Service: o.Service,
			Clients: o.Clients, Rate: o.Rate, Window: o.Window,
			Duration: o.Duration.String(), DurationSeconds: o.Duration.Seconds(),
			Payload: o.Payload, Inflight: o.Inflight, Sources: o.Sources,
			Backends: o.Backends, Recoverable: o.Recoverable, Drain: o.Drain,
		},
		Machine: machine{
			CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
			Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		},
	}
	if o.Drain != "" {
		rep.Params.DrainAfter = o.DrainAfter.String()
	}
	return rep
}

// eachText is ": a + b + c" for the figures of several backends, "" for one.
func eachText(each []int64) string {
	if len(each) < 2 {
		return ""
	}
	parts := make([]string, len(each))
	for i, n := range each {
		parts[i] = fmt.Sprint(n)
	}
	return " (" + strings.Join(parts, " + ") + ")"
}

func round1(f float64) float64 { return roundTo(f, 10) }
func round3(f float64) float64 { return roundTo(f, 1000) }

func roundTo(f, scale float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return math.Round(f*scale) / scale
}

// writeTable writes the report for people.
func writeTable(w io.Writer, rep *report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, a...)) }
	p := rep.Params
	fmt.Fprintf(tw, "dmb-load %s\n", rep.Scenario)
	if rep.Scenario == scenarioIdle {
		row("params", "%d clients, %s, inflight %d, %d source address(es)", p.Clients, p.Duration, p.Inflight, p.Sources)
	} else {
		row("params", "%d clients, rate %s, window %d, %s, payload %d B, inflight %d, %d source address(es), %d backend(s)",
			p.Clients, rateText(p.Rate, "/s"), p.Window, p.Duration, p.Payload, p.Inflight, p.Sources, p.Backends)
		publish := "PUBLISH (live-only)"
		if p.Recoverable {
			publish = "FCALL dmb_publish (recoverable)"
		}
		row("publish", "%s", publish)
	}
	switch p.Transport {
	case transportTCP:
		row("transport", "TCP, one JSON frame per line, to %s", p.TCP)
	case transportSSE:
		row("transport", "HTTP fallback, Server-Sent Events down and POSTs up, to %s", strings.ReplaceAll(p.DMB, "ws://", "http://"))
	default:
		row("transport", "WebSocket, to %s", p.DMB)
	}
	row("machine", "%d CPUs, %s %s/%s", rep.Machine.CPUs, rep.Machine.Go, rep.Machine.OS, rep.Machine.Arch)
	c := rep.Results.Connect
	row("connected", "%d of %d in %.2f s: %.0f/s, %d failed%s", c.Connected, p.Clients, c.Seconds, c.PerSecond, c.Failed, failureText(c.Failures))
	row("handshake µs", "%s", latencyText(c.HandshakeLatency))
	if c.ServerCPUSeconds > 0 {
		row("connect cpu", "DMB %.2f CPU-s: %.0f handshakes per CPU-s", c.ServerCPUSeconds, c.PerServerCPUSecond)
	}
	if r := rep.Results.idleResult; r != nil {
		row("held", "%.1f s, %d dropped%s", r.HeldSeconds, r.Dropped, codesText(r.DropCodes))
		row("per connection", "RSS %s, heap in use %s, goroutines %.2f", bytesText(r.RSSPerConn), bytesText(r.HeapInusePerConn), r.GoroutinesPerConn)
	}
	if r := rep.Results.downlinkResult; r != nil {
		if j := r.Joins; j != nil {
			row("joins", "%d of %d into %d rooms in %.2f s: %.0f/s; DMB %.2f CPU-s, %.0f joins per CPU-s", j.Joined, j.Joins, j.Rooms, j.Seconds, j.PerSecond, j.ServerCPUSeconds, j.PerServerCPUSecond)
		}
		row("sent", "%d messages in %.2f s: %.0f/s (%d window stalls)", r.Sent, r.WindowSeconds, r.SendRate, r.WindowStalls)
		row("received", "%d of %d expected: lost %d, reordered %d, duplicates %d; %d with an offset", r.Received, r.Expected, r.Lost, r.Reordered, r.Duplicates, r.WithOffset)
		row("deliveries", "%.0f/s (drain %.2f s)", r.DeliveriesPerSecond, r.DrainSeconds)
		row("latency µs", "%s", latencyText(r.Latency))
		if r.Dropped > 0 || r.PublishedToNobody > 0 || r.PublishError != "" || r.Undecoded > 0 {
			row("trouble", "%d clients dropped%s, %d published to nobody, %d undecoded %s", r.Dropped, codesText(r.DropCodes), r.PublishedToNobody, r.Undecoded, r.PublishError)
		}
		if r.DeliveriesPerServerCPUSecond > 0 {
			row("efficiency", "%.0f deliveries per DMB CPU-second", r.DeliveriesPerServerCPUSecond)
		}
		if rs := r.Resume; rs != nil {
			resumeText(row, rs)
		}
	}
	if r := rep.Results.uplinkResult; r != nil {
		row("sent", "%d frames in %.2f s", r.Sent, r.WindowSeconds)
		row("answered", "%d acked (%.0f/s), %d errors, %d unanswered (drain %.2f s)", r.Acked, r.AcksPerSecond, r.Errors, r.Unanswered, r.DrainSeconds)
		row("ack latency µs", "%s", latencyText(r.AckLatency))
		row("backend", "received %d (acked %d), out of order %d, undecoded %d%s", r.BackendReceived, r.Acked, r.BackendReordered, r.BackendUndecoded, eachText(r.BackendReceivedEach))
		row("to backend µs", "%s", latencyText(r.BackendLatency))
		if r.Dropped > 0 || r.StrayErrors > 0 || r.Undecoded > 0 || r.UntimedAcks > 0 {
			row("trouble", "%d clients dropped%s, %d stray errors, %d undecoded, %d acks out of order (not timed)", r.Dropped, codesText(r.DropCodes), r.StrayErrors, r.Undecoded, r.UntimedAcks)
		}
		if r.MessagesPerServerCPUSecond > 0 {
			row("efficiency", "%.0f messages per DMB CPU-second", r.MessagesPerServerCPUSecond)
		}
	}
	if rep.Flood != nil {
		floodText(row, rep.Flood)
	}
	if rep.Attack != nil {
		attackText(row, rep.Attack)
	}
	s := rep.Server
	if s.MetricsError != "" {
		row("server", "no metrics: %s", s.MetricsError)
	} else {
		row("server cpu", "%.2f CPU-s over %.2f s (%.2f cores)", s.CPUSeconds, s.CPUWallSeconds, s.CPUCores)
		row("server memory", "RSS %s -> %s, heap in use %s -> %s, goroutines %.0f -> %.0f",
			bytesText(s.RSSBefore), bytesText(s.RSSAfter), bytesText(s.HeapInuseBefore), bytesText(s.HeapInuseAfter),
			s.GoroutinesBefore, s.GoroutinesAfter)
		if len(s.Drops) > 0 {
			row("server drops", "%s", floatsText(s.Drops))
		}
	}
	row("generator cpu", "%.2f CPU-s (%.2f cores)", rep.Generator.CPUSeconds, rep.Generator.CPUCores)
	if rep.Redis.Error == "" {
		row("redis cpu", "%.2f CPU-s (%.2f cores)", rep.Redis.CPUSeconds, rep.Redis.CPUCores)
	}
	_ = tw.Flush()
}

func latencyText(l latencySummary) string {
	if l.Count == 0 {
		return "-"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%d)",
		num(l.P50), num(l.P90), num(l.P99), num(l.P999), num(l.Max), l.Count)
}

func num(f float64) string {
	if f >= 100 {
		return fmt.Sprintf("%.0f", f)
	}
	return fmt.Sprintf("%.1f", f)
}

func bytesText(b float64) string {
	switch a := math.Abs(b); {
	case a >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case a >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case a >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

func failureText(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func codesText(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	return " (close codes " + strings.TrimPrefix(failureText(m), " (")
}

func floatsText(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.0f", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// resumeText writes the resume scenario's rows.
func resumeText(row func(k, format string, a ...any), r *resumeResult) {
	per := make([]string, len(r.Nodes))
	for i, n := range r.Nodes {
		per[i] = fmt.Sprintf("%d on %s", r.ClientsPerNode[i], n)
	}
	row("nodes", "%s", strings.Join(per, ", "))
	if d := r.Drain; d != nil {
		status := fmt.Sprint(d.Status)
		if d.Error != "" {
			status += " " + d.Error
		}
		row("drain", "POST %s/drain at %.2f s: %s", strings.TrimSuffix(d.URL, "/"), d.AtSeconds, status)
	}
	row("per client", "%d messages expected; %d clients missed some", r.ExpectedPerClient, r.ClientsLosing)
	row("drops", "%d connections ended%s; %d clients dropped, %d resumed every time", r.Drops, codesText(r.DropCodes), r.ClientsDropped, r.ClientsResumed)
	row("reconnects", "%d resumed (%d recovered false, %d under another cid), %d fresh sessions, %d failed",
		r.Resumes, r.Unrecovered, r.CIDChanged, r.FreshSessions, r.Failed)
	row("resume µs", "%s", latencyText(r.ResumeLatency))
}
