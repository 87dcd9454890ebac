// Command dmb-load is DMB's load generator. It plays both sides against a
// running DMB node and its Redis: a backend over Redis (registered with
// package backend) and many clients, WebSocket, TCP (one JSON frame per
// line) or the HTTP fallback (Server-Sent Events down, POSTs up), opened
// from many loopback source addresses. It talks to the local machine only: every address it is
// given must be 127.0.0.0/8, ::1 or localhost, and every connection it opens
// is checked again as it connects. Each run is bounded in clients and time,
// stops by itself, and reports one JSON object and a readable table.
//
// Usage:
//
//	dmb-load [flags]
//
//	go run ./cmd/dmb-load -scenario idle -clients 2000 -duration 5s
//	go run ./cmd/dmb-load -scenario broadcast -clients 1000 -rate 0 -duration 10s
//	go run ./cmd/dmb-load -scenario uplink -clients 200 -duration 10s -json out.json
//	go run ./cmd/dmb-load -scenario broadcast -recoverable -clients 1000 -rate 200
//	go run ./cmd/dmb-load -scenario uplink -clients 200 -transport tcp -tcp 127.0.0.1:8084
//	go run ./cmd/dmb-load -scenario broadcast -clients 1000 -transport sse
//	go run ./cmd/dmb-load -scenario resume -dmb ws://127.0.0.1:8082,ws://127.0.0.1:9082 \
//	    -metrics http://127.0.0.1:9082/metrics -drain http://127.0.0.1:8083 -clients 1000
//
// Flags:
//
//	-dmb URL        DMB's WebSocket base URL (default ws://127.0.0.1:8082);
//	                clients connect to URL/ws/SERVICE. Several nodes'
//	                URLs, comma-separated: client i connects to the
//	                URL i mod their number
//	-transport T    how the clients connect: websocket (default); tcp:
//	                one JSON frame per line (docs/protocol.md, section
//	                12), to -tcp, the first line a dmb:hello for the
//	                service; or sse, the HTTP fallback (section 12): an
//	                event stream, GET http://HOST:PORT/sse/SERVICE of
//	                -dmb's host and port, carries DMB's frames, and the
//	                client POSTs its own to the path the stream's first
//	                event names, the frames it sends at once in one POST,
//	                one per line, the next when the last was answered,
//	                over keep-alive connections (one per client). Every
//	                scenario runs over each, reported the same way;
//	                -flood is WebSocket only
//	-tcp ADDR       tcp: the node's TCP address for clients, host:port
//	                (DMB_TCP_PORT; no default). Several nodes' addresses,
//	                comma-separated: client i connects to the address
//	                i mod their number. -dmb then gives only the default
//	                -metrics
//	-metrics URL    DMB's Prometheus endpoint (default: /metrics on -dmb's
//	                host and port, http://127.0.0.1:8082/metrics)
//	-redis ADDR     the Redis DMB uses, host:port (default 127.0.0.1:6379)
//	-prefix P       DMB_PREFIX of the node (default dmb)
//	-service NAME   the service the backend registers and clients join
//	                (default load)
//	-backends N     backends registered for the service (default 1, at
//	                most 64); DMB spreads the clients over them, so the
//	                uplink is read by N Redis subscriptions. The first
//	                publishes the broadcast and direct messages
//	-scenario S     idle, broadcast, direct, uplink, room or resume
//	                (default idle)
//	-rooms R        room: the rooms the clients are spread over, client i in
//	                room i mod R (default 1000, at most 100000)
//	-clients N      clients (default 100, at most 200000 and the
//	                open-file limit; an SSE client takes two files, its
//	                stream and its POSTs' connection)
//	-rate R         broadcast, direct, room, resume: messages/s the backend
//	                publishes (resume's default: 50);
//	                uplink: frames/s each client sends; 0 (default): as fast
//	                as the window allows (at most 1e6)
//	-window W       the bound on messages in flight (0: the scenario's
//	                default): broadcast, messages not yet received by the
//	                slowest client (default 256; keep it below DMB_SEND_QUEUE
//	                or slow clients are closed with 4008); direct, messages
//	                not yet received in all (default min(4096, 256 x N));
//	                uplink, frames per client not yet answered (default 16)
//	-duration D     how long to send, or for idle how long to hold the
//	                connections (default 10s, 100ms to 30m)
//	-payload B      bytes of each message's data (default 100, at most
//	                60000; data carries at least its sequence number and
//	                send time)
//	-inflight K     concurrent WebSocket handshakes (default 64, at most 4096)
//	-sources S      loopback source addresses to spread the clients over,
//	                127.0.0.1, 127.0.0.2, ... (default: enough for 50,000
//	                clients per address, or three quarters of the ephemeral
//	                port range if that is smaller; at most 1000)
//	-json FILE      also write the JSON result to FILE; "-" writes it to
//	                standard output and the table to standard error
//	-v              log the backend library's warnings to standard error
//	-cpuprofile F   write the generator's own CPU profile to F
//	-recoverable    the backend publishes each message (and room's joins)
//	                with FCALL dmb_publish, recoverable, rather than
//	                PUBLISH, live-only (default false; true for resume,
//	                where -recoverable=false shows what live-only loses)
//	-drain URL      resume: the admin listener of one of the nodes
//	                (http://127.0.0.1:8083), which the generator asks to
//	                drain (POST /drain) after -drain-after
//	-drain-after D  resume: when to drain, after the start of sending
//	                (default half of -duration)
//	-flood N        N more connections to the service that flood it beside
//	                the scenario (default 0, at most 1000): see below
//	-flood-reconnect
//	                each flooding connection closes itself and reconnects
//	                after every 200 frames, as well as when DMB closes it
//	-attack KINDS   the other attacks DMB bounds, beside the scenario: all,
//	                or some of slow, big, trickle, unknown, refused,
//	                register and bulk, comma-separated: see below
//
// Scenarios. Each registers the backend, then opens the N clients with at
// most -inflight handshakes at once (a handshake lasts from the dial to
// DMB's dmb:connected frame: for a WebSocket the HTTP upgrade, for TCP the
// hello line, for SSE the stream's answer and its post event), then:
//
//   - idle: holds the connections for -duration. Reports the connect rate,
//     handshake latency, failures, and DMB's memory per connection: the
//     change of process_resident_memory_bytes (and of
//     go_memstats_heap_inuse_bytes and go_goroutines) from before the
//     connects to the end of the hold, divided by the connections. Measure
//     it on a freshly started DMB: a node that served a bigger run keeps
//     the memory it grew to, and the difference then means little.
//   - broadcast: the backend broadcasts messages carrying a sequence number
//     and a send time. Reports deliveries/s, loss (expected minus received,
//     expected being messages times clients), reordering (a client's
//     sequence going backwards), latency from the backend's send to the
//     client's read, and DMB's CPU-seconds and deliveries per CPU-second.
//   - direct: the same with direct messages to the clients in turn.
//   - room: the backend first joins each client to its room (client i to
//     room i mod -rooms) and reports that join storm (joins/s, until every
//     client was told dmb:joined, and DMB's CPU-seconds for it); then it
//     sends room messages to the rooms in turn, reported as for broadcast,
//     expected being each message times its room's members. Run broadcast
//     over the same clients beside it: deliveries per DMB CPU-second side
//     by side.
//   - resume: the backend broadcasts recoverable messages at -rate (no
//     window: the rate bounds what is in flight) to clients spread over
//     the nodes of -dmb (or -tcp), and -drain makes one node leave. A client whose
//     connection ends with 1001, 1006 or 4008 resumes as the browser
//     client does: at once, on the next node of the list that answers
//     (trying the list again after 10 ms, doubling up to 1 s), with its
//     newest session token (dmb:connected, dmb:session) and the last
//     offset of each stream. Reports, beside broadcast's figures, the
//     messages expected per client (every message sent), lost (a sequence
//     number never received), duplicates (received again), reordered
//     (below one received before), the clients per node, the drops by
//     close code, the resumes ("resumed":true), those that said
//     "recovered":false, the fresh sessions after a drop
//     ("resumed":false), the clients whose every drop was resumed, and
//     the time from a connection's end to dmb:connected on the next. Point
//     -metrics at a node that stays: DMB's figures are that node's.
//   - uplink: every client sends frames with ids; DMB acks each. Reports
//     acked frames/s, ack latency, errors, DMB's CPU, and what the backend
//     received (which should equal what was acked) and whether each
//     client's frames reached it in order.
//
// Rates are measured from the start of sending until the last message in
// flight arrived (at most 5 s later, or 1 s after the last arrival), and
// DMB's CPU over the same span, read from process_cpu_seconds_total on
// -metrics; Redis's CPU comes from INFO cpu, and the generator's own is
// reported too: on a small machine the three share the cores. At full speed
// (-rate 0) the window is always full, so latencies are mostly queueing:
// use a -rate below the full-speed figure to measure latency under load.
// Latencies are kept in fixed-size log-linear histograms (1.6% resolution);
// the times in messages come from one monotonic clock, the generator being
// both sender and receiver.
//
// A flood (-flood N) measures what an attack costs the honest clients. Once
// they are connected, at the start of the measured window, N more
// connections to the same service, from the loopback source address after
// the clients' (127.0.0.2 with -sources 1), each write
// {"event":"dmb:message","data":"flood","id":1} as fast as the socket
// takes it, read and discard what DMB sends, and reconnect at once when
// DMB closes or refuses them, until the window ends. They are not among
// the measured clients, and the backends count their messages apart. The
// report's flood section counts the frames the sockets took (DMB reads
// only part of them from a connection it closes), the TCP connections
// opened, the handshakes refused (an answer other than 101, or a close
// before dmb:connected) by reason, the sessions, the close codes DMB sent
// (refusals included; 1006 for a connection dropped without one), the
// connections the flooders closed themselves, and the acks and errors DMB
// answered. The node applies DMB_TRUSTED_PROXIES to the flooders' address:
// with its default, all of 127.0.0.0/8, the per-address limits do not
// apply to them.
//
// The attacks (-attack) are the other floods DMB bounds, each at a fixed
// strength, run like the flood from the start of the measured window to its
// end, from the same source address; the report's attack section counts
// what each sent and what became of it:
//
//   - slow: 100 clients of SERVICE-attack that never read, reconnecting
//     when DMB drops them, while a backend of that service (registered by
//     the generator) broadcasts 256 kB messages 40 times a second;
//   - big: that backend also publishes 900 kB and 1.5 MB broadcasts (the
//     second over DMB_MAX_BACKEND_BYTES' default), 20 a second each;
//   - trickle: 500 connections that send an HTTP request a byte every 200
//     ms, and 500 WebSocket clients of SERVICE that send a tenth of a frame
//     and stop, each opened again when DMB cuts it (after
//     DMB_HANDSHAKE_TIMEOUT and DMB_FRAME_TIMEOUT, 10 s by default);
//   - unknown: 20,000 publishes a second on the downlink channels of bkids
//     DMB never issued, a new one each time;
//   - refused: 4 connections at a time that ask, one handshake after
//     another, for SERVICE-nobody, which nobody serves;
//   - register: 2,000 bk_connect a second, each for a new service
//     (SERVICE-junk-...). They fill the registry, up to DMB_MAX_SERVICES,
//     with services that stay until DMB_BACKEND_RETENTION (1 h): run it
//     against a Redis you throw away afterwards.
//
// -attack bulk is no attack: slow's broadcasts without its clients, the
// baseline that tells what slow's clients themselves cost (all leaves it
// out).
//
// An SSE client reads its stream and answers in its reader, as the others
// do; at full speed (uplink, -rate 0) that reader sends the next POST,
// so while a POST waits for its 204 the stream is not read: the acks that
// came meanwhile are read after it, and their frames go in the next POST.
//
// Before the connects, one probe client waits until DMB admits clients of
// the service: a node may answer 4503 for a moment after a backend
// registered, and the connect figures should not measure that.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/dmb-broker/dmb/protocol"
)

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "dmb-load:", err)
		}
		os.Exit(2)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := run(ctx, o, stderr)
	if err != nil {
		return err
	}
	table := stdout
	if o.JSON == "-" {
		table = stderr
	}
	writeTable(table, rep)
	if o.JSON != "" {
		return writeJSON(o.JSON, stdout, rep)
	}
	return nil
}

// writeJSON writes the report to path, or to stdout for "-".
func writeJSON(path string, stdout io.Writer, rep *report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// options are the flags.
type options struct {
	DMB        string
	Metrics    string
	Redis      string
	Prefix     string
	Service    string
	Scenario   string
	Clients    int
	Rate       float64
	Window     int
	Duration   time.Duration
	Payload    int
	Inflight   int
	Sources    int
	JSON       string
	Verbose    bool
	CPUProfile string
	Backends   int

	Rooms          int      // room: rooms the clients are spread over
	Flood          int      // flooding connections beside the scenario
	FloodReconnect bool     // each reconnects after floodReconnectEvery frames
	Attack         string   // -attack: kinds, comma-separated, or all
	attacks        []string // -attack, read

	// Recoverable publishes with FCALL dmb_publish rather than PUBLISH;
	// recoverableSet says -recoverable was given (resume's default is true).
	Recoverable    bool
	recoverableSet bool

	Transport  string        // websocket, tcp or sse
	TCP        string        // tcp: the nodes' TCP addresses, comma-separated
	Drain      string        // resume: the admin URL of the node to drain
	DrainAfter time.Duration // resume: when, after the start of sending

	urls     []string // -dmb's URLs, in order
	tcpAddrs []string // -tcp's addresses, in order
}

// Transports.
const (
	transportWebSocket = "websocket"
	transportTCP       = "tcp"
	transportSSE       = "sse"
)

// Scenarios.
const (
	scenarioIdle      = "idle"
	scenarioBroadcast = "broadcast"
	scenarioDirect    = "direct"
	scenarioUplink    = "uplink"
	scenarioRoom      = "room"
	scenarioResume    = "resume"
)

// defaultResumeRate is resume's -rate when none is given.
const defaultResumeRate = 50

// Bounds of the flags.
const (
	maxClients   = 200000
	maxRate      = 1e6
	minDuration  = 100 * time.Millisecond
	maxDuration  = 30 * time.Minute
	maxPayload   = 60000
	maxInflight  = 4096
	maxWindowBC  = 1000 // below DMB_SEND_QUEUE's default, 1024
	maxWindowDir = 1 << 20
	maxWindowUp  = 4096
	maxBackends  = 64
)

func defaultOptions() options {
	return options{
		DMB: "ws://127.0.0.1:8082", Redis: "127.0.0.1:6379", Prefix: "dmb",
		Service: "load", Scenario: scenarioIdle, Clients: 100, Rooms: 1000, Duration: 10 * time.Second,
		Payload: 100, Inflight: 64, Backends: 1, Transport: transportWebSocket,
	}
}

// parseOptions reads and checks the flags.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	o := defaultOptions()
	fs := flag.NewFlagSet("dmb-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.DMB, "dmb", o.DMB, "DMB's WebSocket base URL, or several, comma-separated: clients connect to URL/ws/SERVICE, round-robin")
	fs.StringVar(&o.Metrics, "metrics", "", "DMB's /metrics URL (default: http://DMB-HOST:PORT/metrics)")
	fs.StringVar(&o.Redis, "redis", o.Redis, "Redis host:port that DMB uses")
	fs.StringVar(&o.Prefix, "prefix", o.Prefix, "DMB_PREFIX of the node")
	fs.StringVar(&o.Service, "service", o.Service, "service the backend registers and the clients join")
	fs.IntVar(&o.Backends, "backends", o.Backends, fmt.Sprintf("backends registered for the service, clients spread over them (1-%d)", maxBackends))
	fs.StringVar(&o.Scenario, "scenario", o.Scenario, "idle, broadcast, direct, uplink, room or resume")
	fs.IntVar(&o.Rooms, "rooms", o.Rooms, fmt.Sprintf("room: rooms the clients are spread over, client i in room i mod R (1-%d)", maxRooms))
	fs.IntVar(&o.Clients, "clients", o.Clients, fmt.Sprintf("clients (1-%d)", maxClients))
	fs.Float64Var(&o.Rate, "rate", o.Rate, "broadcast/direct: messages/s; uplink: frames/s per client; 0: as fast as the window allows")
	fs.IntVar(&o.Window, "window", o.Window, "messages in flight (0: scenario default: broadcast 256 behind the slowest client, direct min(4096, 256*N) in all, uplink 16 per client)")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "how long to send, or to hold the connections for idle (100ms-30m)")
	fs.IntVar(&o.Payload, "payload", o.Payload, fmt.Sprintf("bytes of each message's data (0-%d)", maxPayload))
	fs.IntVar(&o.Inflight, "inflight", o.Inflight, fmt.Sprintf("concurrent WebSocket handshakes (1-%d)", maxInflight))
	fs.IntVar(&o.Sources, "sources", o.Sources, fmt.Sprintf("loopback source addresses 127.0.0.1... to spread clients over (0: enough for %d per address; at most %d)", perSourceLimit(), maxSources))
	fs.StringVar(&o.JSON, "json", "", `write the JSON result to this file ("-": standard output, the table then goes to standard error)`)
	fs.BoolVar(&o.Verbose, "v", false, "log the backend library's warnings to standard error")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write the generator's own CPU profile to this file")
	fs.IntVar(&o.Flood, "flood", o.Flood, fmt.Sprintf("connections flooding the service with frames beside the scenario, not measured (0-%d)", maxFlood))
	fs.BoolVar(&o.Recoverable, "recoverable", o.Recoverable, "the backend publishes with FCALL dmb_publish (recoverable) rather than PUBLISH (live-only); resume's default is true")
	fs.StringVar(&o.Drain, "drain", o.Drain, "resume: POST /drain to the admin URL of this node (http://127.0.0.1:8083) after -drain-after")
	fs.DurationVar(&o.DrainAfter, "drain-after", o.DrainAfter, "resume: when to drain, after the start of sending (default: half of -duration)")
	fs.StringVar(&o.Transport, "transport", o.Transport, "how the clients connect: websocket; tcp (one JSON frame per line, to -tcp); or sse (HTTP fallback: GET /sse/SERVICE on -dmb's host for DMB's frames, POSTs for the client's)")
	fs.StringVar(&o.TCP, "tcp", o.TCP, "tcp: the node's TCP address for clients (DMB_TCP_PORT), host:port, or several nodes', comma-separated, round-robin")
	fs.StringVar(&o.Attack, "attack", o.Attack, fmt.Sprintf("attacks beside the scenario, not measured: all, or some of %s, comma-separated (see the package documentation)", strings.Join(attackKinds, ", ")))
	fs.BoolVar(&o.FloodReconnect, "flood-reconnect", o.FloodReconnect, fmt.Sprintf("each flooding connection closes and reconnects after every %d frames", floodReconnectEvery))
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: dmb-load [flags]\n\n"+
			"Load generator for DMB: a backend over Redis and N WebSocket, TCP or SSE (HTTP fallback) clients, loopback only.\n"+
			"Scenarios: idle (connect and hold), broadcast, direct, room (backend to clients), uplink (clients to backend),\n"+
			"resume (recoverable broadcasts while a node drains: loss, duplicates and resumes).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { o.recoverableSet = o.recoverableSet || f.Name == "recoverable" })
	if err := o.check(); err != nil {
		return o, err
	}
	return o, nil
}

// check validates the options and fills in the defaults that depend on
// others (-metrics, -sources, -window).
func (o *options) check() error {
	o.urls = nil
	var u *url.URL
	for _, raw := range strings.Split(o.DMB, ",") {
		ui, err := checkURL("dmb", strings.TrimSpace(raw), "ws")
		if err != nil {
			return err
		}
		if u == nil {
			u = ui
		} else if isIPv6Host(ui.Hostname()) != isIPv6Host(u.Hostname()) {
			return fmt.Errorf("-dmb %q: mixes IPv4 and IPv6 addresses", o.DMB)
		}
		o.urls = append(o.urls, strings.TrimSpace(raw))
	}
	if len(o.urls) > maxNodes {
		return fmt.Errorf("-dmb: %d URLs, at most %d", len(o.urls), maxNodes)
	}
	if o.Metrics == "" {
		o.Metrics = "http://" + u.Host + "/metrics"
	}
	ipv6, err := o.checkTransport(isIPv6Host(u.Hostname()))
	if err != nil {
		return err
	}
	if _, err := checkURL("metrics", o.Metrics, "http"); err != nil {
		return err
	}
	if err := checkHostPort("redis", o.Redis); err != nil {
		return err
	}
	switch o.Scenario {
	case scenarioIdle, scenarioBroadcast, scenarioDirect, scenarioUplink, scenarioRoom, scenarioResume:
	default:
		return fmt.Errorf("-scenario %q: want idle, broadcast, direct, uplink, room or resume", o.Scenario)
	}
	if err := o.checkResume(); err != nil {
		return err
	}
	if o.Rooms < 1 || o.Rooms > maxRooms {
		return fmt.Errorf("-rooms %d: want 1 to %d", o.Rooms, maxRooms)
	}
	if !protocol.ValidService(o.Service) {
		return fmt.Errorf("-service %q: 1-64 characters of a-z 0-9 _ . -", o.Service)
	}
	if o.Prefix == "" {
		return errors.New("-prefix is empty")
	}
	switch {
	case o.Clients < 1 || o.Clients > maxClients:
		return fmt.Errorf("-clients %d: want 1 to %d", o.Clients, maxClients)
	case o.Rate < 0 || o.Rate > maxRate:
		return fmt.Errorf("-rate %g: want 0 to %g", o.Rate, float64(maxRate))
	case o.Duration < minDuration || o.Duration > maxDuration:
		return fmt.Errorf("-duration %v: want %v to %v", o.Duration, minDuration, maxDuration)
	case o.Payload < 0 || o.Payload > maxPayload:
		return fmt.Errorf("-payload %d: want 0 to %d", o.Payload, maxPayload)
	case o.Inflight < 1 || o.Inflight > maxInflight:
		return fmt.Errorf("-inflight %d: want 1 to %d", o.Inflight, maxInflight)
	case o.Sources < 0 || o.Sources > maxSources:
		return fmt.Errorf("-sources %d: want 0 (automatic) to %d", o.Sources, maxSources)
	case o.Backends < 1 || o.Backends > maxBackends:
		return fmt.Errorf("-backends %d: want 1 to %d", o.Backends, maxBackends)
	case o.Window < 0:
		return fmt.Errorf("-window %d: want 0 (the default) or more", o.Window)
	case o.Flood < 0 || o.Flood > maxFlood:
		return fmt.Errorf("-flood %d: want 0 to %d", o.Flood, maxFlood)
	case o.FloodReconnect && o.Flood == 0:
		return errors.New("-flood-reconnect needs -flood")
	}
	if o.Sources == 0 {
		o.Sources = defaultSources(o.Clients)
		if ipv6 {
			o.Sources = 1
		}
	}
	if o.attacks, err = parseAttacks(o.Attack); err != nil {
		return err
	}
	if len(o.attacks) > 0 && len(o.Service)+max(len(attackSuffix), len(nobodySuffix), len(junkSuffix)+20) > 64 {
		return fmt.Errorf("-service %q: too long for -attack's services (%s, %s)", o.Service, o.Service+attackSuffix, o.Service+nobodySuffix)
	}
	if !ipv6 && (o.Flood > 0 || len(o.attacks) > 0) && o.Sources == maxSources {
		return fmt.Errorf("-sources %d: -flood and -attack need one more source address, at most %d for the clients", o.Sources, maxSources-1)
	}
	if ipv6 && o.Sources > 1 {
		return fmt.Errorf("-sources %d: an IPv6 target has one loopback source address, ::1", o.Sources)
	}
	if per := perSourceLimit(); o.Clients > o.Sources*per {
		return fmt.Errorf("-clients %d need at least %d source addresses (-sources) at %d per address", o.Clients, (o.Clients+per-1)/per, per)
	}
	var limit int
	switch o.Scenario {
	case scenarioBroadcast:
		limit = maxWindowBC
		if o.Window == 0 {
			o.Window = 256
		}
	case scenarioDirect, scenarioRoom:
		limit = maxWindowDir
		if o.Window == 0 {
			o.Window = min(4096, 256*o.Clients)
		}
	case scenarioUplink:
		limit = maxWindowUp
		if o.Window == 0 {
			o.Window = 16
		}
	default:
		limit = 0
		o.Window = 0
	}
	if o.Window > limit {
		return fmt.Errorf("-window %d: at most %d for %s", o.Window, limit, o.Scenario)
	}
	return nil
}

// checkTransport checks -transport and -tcp, given whether -dmb is IPv6,
// and tells whether the clients connect to IPv6 addresses.
func (o *options) checkTransport(dmbIPv6 bool) (ipv6 bool, err error) {
	o.tcpAddrs = nil
	switch o.Transport {
	case transportWebSocket, transportSSE:
		if o.TCP != "" {
			return false, errors.New("-tcp is for -transport tcp")
		}
		if o.Transport == transportSSE && o.Flood > 0 {
			return false, errors.New("-flood: WebSocket only")
		}
		return dmbIPv6, nil
	case transportTCP:
	default:
		return false, fmt.Errorf("-transport %q: want websocket, tcp or sse", o.Transport)
	}
	if o.TCP == "" {
		return false, errors.New("-transport tcp needs -tcp, the node's TCP address (DMB_TCP_PORT)")
	}
	for i, raw := range strings.Split(o.TCP, ",") {
		a := strings.TrimSpace(raw)
		if err := checkHostPort("tcp", a); err != nil {
			return false, err
		}
		host, _, _ := net.SplitHostPort(a)
		if i == 0 {
			ipv6 = isIPv6Host(host)
		} else if isIPv6Host(host) != ipv6 {
			return false, fmt.Errorf("-tcp %q: mixes IPv4 and IPv6 addresses", o.TCP)
		}
		o.tcpAddrs = append(o.tcpAddrs, a)
	}
	if len(o.tcpAddrs) > maxNodes {
		return false, fmt.Errorf("-tcp: %d addresses, at most %d", len(o.tcpAddrs), maxNodes)
	}
	if o.Flood > 0 {
		return false, errors.New("-flood: WebSocket only")
	}
	return ipv6, nil
}

// tcp tells whether the clients connect over TCP.
func (o *options) tcp() bool { return o.Transport == transportTCP }

// clientIPv6 tells whether the clients connect to an IPv6 address.
func (o *options) clientIPv6() bool {
	if o.tcp() && len(o.tcpAddrs) > 0 {
		host, _, _ := net.SplitHostPort(o.tcpAddrs[0])
		return isIPv6Host(host)
	}
	return isIPv6Host(urlHost(o.DMB))
}

// sse tells whether the clients connect over the HTTP fallback.
func (o *options) sse() bool { return o.Transport == transportSSE }

// targets are where the clients connect, one per node: -dmb's URLs of the
// service (WebSocket or event stream), or -tcp's addresses.
func (o *options) targets() []string {
	switch {
	case o.tcp():
		return o.tcpAddrs
	case o.sse():
		return o.sseURLs()
	}
	return o.wsURLs()
}

// endpoints are the targets, ready to connect to; post sends the frames
// of SSE clients.
func (o *options) endpoints(post *http.Client) ([]*endpoint, error) {
	var out []*endpoint
	for _, t := range o.targets() {
		var ep *endpoint
		var err error
		switch {
		case o.tcp():
			ep, err = newTCPEndpoint(t, o.Service, nil)
		case o.sse():
			ep, err = newSSEEndpoint(t, post)
		default:
			ep, err = newEndpoint(t)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ep)
	}
	return out, nil
}

// maxNodes bounds the URLs of -dmb.
const maxNodes = 64

// checkResume checks -recoverable, -drain and -drain-after, and fills in
// resume's defaults.
func (o *options) checkResume() error {
	if o.Scenario != scenarioResume {
		switch {
		case o.Drain != "" || o.DrainAfter != 0:
			return fmt.Errorf("-drain and -drain-after are for -scenario resume")
		case o.Recoverable && (o.Scenario == scenarioIdle || o.Scenario == scenarioUplink):
			return fmt.Errorf("-recoverable: %s publishes nothing", o.Scenario)
		}
		return nil
	}
	if !o.recoverableSet {
		o.Recoverable = true
	}
	if o.Rate == 0 {
		o.Rate = defaultResumeRate
	}
	if o.Flood > 0 || o.Attack != "" {
		return errors.New("-flood and -attack: not with -scenario resume")
	}
	if o.Drain == "" {
		if o.DrainAfter != 0 {
			return errors.New("-drain-after needs -drain")
		}
		return nil
	}
	if _, err := checkURL("drain", o.Drain, "http"); err != nil {
		return err
	}
	if o.DrainAfter == 0 {
		o.DrainAfter = o.Duration / 2
	}
	if o.DrainAfter < 0 || o.DrainAfter >= o.Duration {
		return fmt.Errorf("-drain-after %v: want more than 0 and less than -duration %v", o.DrainAfter, o.Duration)
	}
	return nil
}

// wsURL is the URL clients connect to, of the first node.
func (o *options) wsURL() string { return o.wsURLs()[0] }

// wsURLs are the URLs clients connect to, one per node of -dmb.
func (o *options) wsURLs() []string { return o.serviceURLs("ws") }

// sseURLs are the URLs of the clients' event streams, one per node of
// -dmb: http://HOST:PORT/sse/SERVICE.
func (o *options) sseURLs() []string { return o.serviceURLs("sse") }

// serviceURLs are the URLs of the service under /kind/ (ws or sse), one
// per node of -dmb; an event stream's is an http URL.
func (o *options) serviceURLs(kind string) []string {
	urls := o.urls
	if len(urls) == 0 {
		urls = []string{o.DMB}
	}
	out := make([]string, len(urls))
	for i, base := range urls {
		base = strings.TrimRight(base, "/")
		if kind == "sse" {
			base = "http" + strings.TrimPrefix(base, "ws")
		}
		out[i] = base + "/" + kind + "/" + o.Service
	}
	return out
}

// logger is the backend library's logger.
func (o *options) logger(stderr io.Writer) *slog.Logger {
	if !o.Verbose || stderr == nil {
		return discardLogger()
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
