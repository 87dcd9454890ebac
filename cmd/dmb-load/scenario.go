package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Time bounds of the phases around the measured window.
const (
	connectLimit = 2 * time.Minute // the whole connect phase
	drainLimit   = 5 * time.Second // waiting for messages in flight after sending
	drainIdle    = time.Second     // ... unless nothing arrived for this long
	closeLimit   = 30 * time.Second
)

// runner is one run: its options, the backend, the clients and the
// report being filled in.
type runner struct {
	o        *options
	progress io.Writer
	clock    *runClock
	url      string        // the first node's
	dialers  []*net.Dialer // one per source address
	endpoint *endpoint     // the first node's
	nodes    []*endpoint   // every node of -dmb, in order
	mhc      *http.Client  // for /metrics
	pad      []byte
	lat      *histogram     // downlink latency or ack latency
	be       *loadBackend   // the first backend, which publishes
	bes      []*loadBackend // every backend (-backends)
	beLat    *histogram     // uplink latency to the backends
	clients  []*client      // the connected ones

	roomNames []string    // room: the rooms, by index
	members   [][]*client // room: the clients of each room
	flood     *flood      // -flood: the attack beside the scenario
	attack    *attack     // -attack: the others
	resumer   *resumer    // resume: the clients' shared side
	stopResum context.CancelFunc
	perNode   []int // clients connected to each node at first
	senders   sync.WaitGroup
	rep       *report

	before serverSample // before the connects
	start  serverSample // at the start of the measured window
	end    serverSample // at its end

	redisStart, redisEnd float64       // Redis's CPU-seconds at the start and end of the window
	redisErr             error         // why Redis's CPU could not be read
	genStart, genEnd     time.Duration // the generator's CPU time
}

// run runs one scenario and returns its report. It returns an error when
// the run could not start (no backend, no client connected); trouble during
// the run is in the report.
func run(ctx context.Context, o options, progress io.Writer) (*report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if progress == nil {
		progress = io.Discard
	}
	files := o.Clients + o.Flood + attackFiles(o.attacks) + 64
	if o.sse() {
		files += o.Clients // a stream and a connection for the POSTs each
	}
	if lim := fileLimit(); lim != 0 && uint64(files) > lim {
		return nil, fmt.Errorf("-clients %d, -flood %d and -attack %q need %d open files; the limit is %d (ulimit -n)", o.Clients, o.Flood, o.Attack, files, lim)
	}
	// Whatever happens, the run ends.
	ctx, cancel := context.WithTimeout(ctx, registerTimeout+connectLimit+o.Duration+drainLimit+closeLimit)
	defer cancel()

	r := &runner{
		o: &o, progress: progress, clock: &runClock{start: time.Now()}, url: o.wsURL(),
		mhc: metricsClient(), lat: &histogram{}, beLat: &histogram{},
		pad: make([]byte, o.Payload),
		rep: newReport(&o),
	}
	for i := range r.pad {
		r.pad[i] = 'x'
	}
	for _, src := range sourceAddrs(o.Sources, o.clientIPv6()) {
		r.dialers = append(r.dialers, dialer(src))
	}
	var post *http.Client
	if o.sse() {
		post = postClient(r.dialers, o.Clients)
		defer post.CloseIdleConnections()
	}
	nodes, err := o.endpoints(post)
	if err != nil {
		return nil, err
	}
	r.nodes = nodes
	r.endpoint = r.nodes[0]
	r.perNode = make([]int, len(r.nodes))
	if o.Scenario == scenarioResume {
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		r.resumer, r.stopResum = newResumer(rctx, r.nodes, o.Payload+4096), stop
	}

	bes, err := startBackends(ctx, &o, r.clock, r.beLat, o.logger(progress))
	if err != nil {
		return nil, err
	}
	r.be, r.bes = bes[0], bes
	defer func() {
		for _, lb := range bes {
			lb.close()
		}
	}()
	for _, lb := range bes {
		fmt.Fprintf(progress, "backend of %q registered as bkid %s\n", o.Service, lb.b.BKID())
	}
	if err := r.waitAdmitted(ctx); err != nil {
		return nil, err
	}

	r.before = r.scrape(ctx)
	r.connect(ctx)
	defer r.closeClients()
	if len(r.clients) == 0 {
		return r.rep, fmt.Errorf("no client connected (failures: %v)", r.rep.Results.Connect.Failures)
	}

	if o.Flood > 0 {
		r.flood = startFlood(ctx, &o, r.endpoint)
		defer r.flood.stop()
		fmt.Fprintf(progress, "flooding from %d connections from %s\n", o.Flood, r.flood.source)
	}
	if len(o.attacks) > 0 {
		if r.attack, err = startAttack(ctx, &o); err != nil {
			return nil, err
		}
		defer r.attack.stop()
		fmt.Fprintf(progress, "attacking (%s) from %s\n", strings.Join(o.attacks, ", "), r.attack.source)
	}
	r.sampleStart(ctx)
	switch o.Scenario {
	case scenarioIdle:
		r.idle(ctx)
	case scenarioBroadcast, scenarioDirect, scenarioResume:
		r.downlink(ctx, nil)
	case scenarioRoom:
		r.downlink(ctx, r.joinRooms(ctx))
	case scenarioUplink:
		r.uplink(ctx)
	}
	r.fillServer()
	if r.flood != nil {
		r.flood.stop()
		var n int64
		for _, lb := range r.bes {
			n += lb.flood.Load()
		}
		r.rep.Flood = r.flood.report(n)
	}
	if r.attack != nil {
		r.attack.stop()
		r.rep.Attack = r.attack.report()
	}
	return r.rep, nil
}

// urlHost is the host of a URL that check accepted.
func urlHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// scrape reads DMB's metrics; a failure is noted in the report and leaves
// the server figures empty.
func (r *runner) scrape(ctx context.Context) serverSample {
	s, err := scrape(context.WithoutCancel(ctx), r.mhc, r.o.Metrics)
	if err != nil && r.rep.Server.MetricsError == "" {
		r.rep.Server.MetricsError = err.Error()
		fmt.Fprintf(r.progress, "warning: %v\n", err)
	}
	return s
}

// sampleStart reads DMB's, Redis's and the generator's figures at the
// start of the measured window.
func (r *runner) sampleStart(ctx context.Context) {
	r.start = r.scrape(ctx)
	r.redisStart, r.redisErr = r.be.redisCPU(context.WithoutCancel(ctx))
	r.genStart = processCPU()
}

// sampleEnd ends the flood and the attacks, which last as long as the
// window, and reads the figures at the window's end.
func (r *runner) sampleEnd(ctx context.Context) {
	r.flood.stop()
	r.attack.stop()
	r.genEnd = processCPU()
	r.end = r.scrape(ctx)
	if r.redisErr == nil {
		r.redisEnd, r.redisErr = r.be.redisCPU(context.WithoutCancel(ctx))
	}
}

// serverCPU is DMB's CPU-seconds over the measured window.
func (r *runner) serverCPU() float64 {
	if r.rep.Server.MetricsError != "" {
		return 0
	}
	return r.end.CPU - r.start.CPU
}

// connect opens the clients with at most -inflight handshakes at once.
func (r *runner) connect(ctx context.Context) {
	o := r.o
	ctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	fmt.Fprintf(r.progress, "connecting %d clients to %s from %d source address(es), %d at a time\n", o.Clients, strings.Join(o.targets(), ", "), len(r.dialers), o.Inflight)

	hs := &histogram{}
	slots := make([]*client, o.Clients)
	var next, attempted, ok atomic.Int64
	var mu sync.Mutex
	failures := map[string]int{}
	readLimit := o.Payload + 4096

	stopProgress := r.every(time.Second, func() {
		fmt.Fprintf(r.progress, "  %d/%d connected\n", ok.Load(), o.Clients)
	})
	start := time.Now()
	var wg sync.WaitGroup
	for range min(o.Inflight, o.Clients) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.Clients || ctx.Err() != nil {
					return
				}
				attempted.Add(1)
				t0 := time.Now()
				d := r.dialers[i%len(r.dialers)]
				c, err := dialClient(ctx, d, r.nodes[i%len(r.nodes)], readLimit)
				if err != nil {
					mu.Lock()
					addFailure(failures, failureReason(err))
					mu.Unlock()
					continue
				}
				hs.record(i, time.Since(t0))
				c.idx, c.lat, c.run = i, r.lat, r.clock
				if o.Scenario == scenarioUplink {
					c.up = newUplinkState(o.Window, o.Rate == 0, o.Payload, r.pad)
				}
				if r.resumer != nil {
					c.rs = &resumeState{r: r.resumer, dialer: d, ep: i % len(r.nodes)}
				}
				c.startReading()
				slots[i] = c
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	for i, c := range slots {
		if c != nil {
			r.clients = append(r.clients, c)
			r.perNode[i%len(r.nodes)]++
		}
	}
	if n := int64(o.Clients) - attempted.Load(); n > 0 {
		failures["not attempted (connect phase over)"] += int(n)
	}
	res := &r.rep.Results.Connect
	res.Attempted = int(attempted.Load())
	res.Connected = len(r.clients)
	res.Failed = o.Clients - len(r.clients)
	res.Failures = failures
	res.Seconds = round3(elapsed.Seconds())
	res.PerSecond = round1(float64(len(r.clients)) / elapsed.Seconds())
	res.HandshakeLatency = hs.summary()
	fmt.Fprintf(r.progress, "connected %d of %d in %.2f s\n", len(r.clients), o.Clients, elapsed.Seconds())
}

// waitAdmitted connects one client to each node, again while DMB answers
// 4503, until every node admits clients of the service. A node can refuse
// clients with 4503 for a moment after a backend registered: the load
// would measure that moment, not the node.
func (r *runner) waitAdmitted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	for _, e := range r.nodes {
		for {
			c, err := dialClient(ctx, r.dialers[0], e, 4096)
			if err == nil {
				c.lat, c.run = r.lat, r.clock
				c.startReading()
				c.close(websocket.StatusNormalClosure, "probe")
				break
			}
			if websocket.CloseStatus(err) != 4503 || ctx.Err() != nil {
				return fmt.Errorf("first client of %s: %w", e.url, err)
			}
			sleepCtx(ctx, 20*time.Millisecond)
		}
	}
	return nil
}

// maxFailureKinds bounds the distinct failure reasons reported.
const maxFailureKinds = 16

func addFailure(m map[string]int, reason string) {
	if _, ok := m[reason]; !ok && len(m) >= maxFailureKinds {
		reason = "other"
	}
	m[reason]++
}

// every calls f every d until the returned stop is called.
func (r *runner) every(d time.Duration, f func()) (stop func()) {
	if r.progress == io.Discard {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				f()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// idle holds the connections for the duration.
func (r *runner) idle(ctx context.Context) {
	fmt.Fprintf(r.progress, "holding %d connections for %v\n", len(r.clients), r.o.Duration)
	t0 := time.Now()
	sleepCtx(ctx, r.o.Duration)
	r.sampleEnd(ctx)
	n := float64(len(r.clients))
	res := &idleResult{HeldSeconds: round3(time.Since(t0).Seconds())}
	res.Dropped, res.DropCodes = r.dropped()
	if r.rep.Server.MetricsError == "" {
		res.RSSPerConn = round1((r.end.RSS - r.before.RSS) / n)
		res.HeapInusePerConn = round1((r.end.HeapInuse - r.before.HeapInuse) / n)
		res.GoroutinesPerConn = round3((r.end.Goroutines - r.before.Goroutines) / n)
	}
	r.rep.Results.idleResult = res
}

// dropped counts the clients whose connection ended before the generator
// closed it, by close code.
func (r *runner) dropped() (int, map[string]int) {
	n, codes := 0, map[string]int{}
	for _, c := range r.clients {
		if c.gone.Load() {
			<-c.ended
			n++
			codes[strconv.Itoa(c.endCode())]++
		}
	}
	return n, codes
}

// downlink runs broadcast, direct or room: the backend publishes for the
// duration, then the generator waits for what is still in flight. joins
// is the room scenario's join storm.
func (r *runner) downlink(ctx context.Context, joins *joinResult) {
	o := r.o
	direct := o.Scenario == scenarioDirect
	fmt.Fprintf(r.progress, "%s to %d clients for %v at %s, window %d\n", o.Scenario, len(r.clients), o.Duration, rateText(o.Rate, "messages/s"), o.Window)
	t0 := time.Now()
	stopProgress := r.every(time.Second, func() {
		fmt.Fprintf(r.progress, "  %d received\n", r.received())
	})
	var drained chan *drainResult
	if o.Drain != "" {
		drained = make(chan *drainResult, 1)
		go func() { drained <- r.drainNode(ctx, t0) }()
	}
	pub, pubErr := r.publish(ctx, direct, t0, t0.Add(o.Duration))
	t1 := time.Now()
	expected := pub.sent
	switch o.Scenario {
	case scenarioBroadcast, scenarioResume:
		expected *= int64(len(r.clients))
	case scenarioRoom:
		expected = 0
		for _, c := range r.clients {
			expected += c.sentTo.Load()
		}
	}
	// Even when interrupted: what is in flight is not lost.
	r.drain(context.WithoutCancel(ctx), func() bool { return r.received() >= expected }, r.received)
	tD := time.Now()
	stopProgress()
	r.sampleEnd(ctx)

	res := &downlinkResult{
		Sent:              pub.sent,
		SendRate:          round1(float64(pub.sent) / t1.Sub(t0).Seconds()),
		Expected:          expected,
		PublishedToNobody: pub.nobody,
		WindowStalls:      pub.stalls,
		WindowSeconds:     round3(t1.Sub(t0).Seconds()),
		DrainSeconds:      round3(tD.Sub(t1).Seconds()),
		MaxScheduleLagMS:  round3(float64(pub.maxLag) / 1e6),
		Joins:             joins,
	}
	if pubErr != nil {
		res.PublishError = pubErr.Error()
	}
	// The counters are read once the readers have stopped.
	r.closeClients()
	res.Dropped, res.DropCodes = r.dropped()
	for _, c := range r.clients {
		res.Received += c.received.Load()
		res.Reordered += c.reordered
		res.Duplicates += c.duplicates
		res.Undecoded += c.undecoded
		res.WithOffset += c.withOffset
	}
	res.Lost = res.Expected - res.Received
	if r.resumer != nil {
		res.Resume = r.resumeResult(pub.sent, drained)
		res.Lost = 0
		for _, c := range r.clients {
			res.Lost += c.rs.missing(pub.sent)
		}
	}
	res.DeliveriesPerSecond = round1(float64(res.Received) / tD.Sub(t0).Seconds())
	res.Latency = r.lat.summary()
	if r.rep.Server.MetricsError == "" {
		res.ServerDeliveries = r.end.Deliveries - r.start.Deliveries
	}
	if cpu := r.serverCPU(); cpu > 0 {
		res.DeliveriesPerServerCPUSecond = round1(float64(res.Received) / cpu)
	}
	r.rep.Results.downlinkResult = res
}

// joinRooms spreads the clients over -rooms rooms, client i in room i mod
// R, by the backend's join commands, pipelined, and waits until each client
// was told dmb:joined: the join storm.
func (r *runner) joinRooms(ctx context.Context) *joinResult {
	o := r.o
	r.roomNames = make([]string, o.Rooms)
	for i := range r.roomNames {
		r.roomNames[i] = "room-" + strconv.Itoa(i)
	}
	r.members = make([][]*client, o.Rooms)
	for i, c := range r.clients {
		r.members[i%o.Rooms] = append(r.members[i%o.Rooms], c)
	}
	fmt.Fprintf(r.progress, "joining %d clients to %d rooms\n", len(r.clients), o.Rooms)
	cpu0 := r.scrape(ctx)
	t0 := time.Now()
	channel := r.be.downlink()
	var arena []byte
	cmds := make([][]byte, 0, publishBatchMax)
	for start := 0; start < len(r.clients); start += publishBatchMax {
		arena, cmds = arena[:0], cmds[:0]
		for i := start; i < min(start+publishBatchMax, len(r.clients)); i++ {
			mark := len(arena)
			arena = appendJoin(arena, r.roomNames[i%o.Rooms], r.clients[i].cid)
			cmds = append(cmds, arena[mark:])
		}
		if _, err := r.be.publishBatch(ctx, channel, cmds); err != nil {
			fmt.Fprintf(r.progress, "join: %v\n", err)
			break
		}
	}
	joined := func() int64 {
		var n int64
		for _, c := range r.clients {
			n += c.joined.Load()
		}
		return n
	}
	r.drain(ctx, func() bool { return joined() >= int64(len(r.clients)) }, joined)
	took := time.Since(t0)
	cpu1 := r.scrape(ctx)
	res := &joinResult{Rooms: o.Rooms, Joins: int64(len(r.clients)), Joined: joined(), Seconds: round3(took.Seconds())}
	res.PerSecond = round1(float64(res.Joined) / took.Seconds())
	if cpu := cpu1.CPU - cpu0.CPU; cpu > 0 && cpu0.CPU > 0 {
		res.ServerCPUSeconds = round3(cpu)
		res.PerServerCPUSecond = round1(float64(res.Joined) / cpu)
	}
	r.sampleStart(ctx) // the measured window starts after the joins
	return res
}

// received is the broadcast and direct frames all clients received.
func (r *runner) received() int64 {
	var n int64
	for _, c := range r.clients {
		n += c.received.Load()
	}
	return n
}

// drain waits until done holds, progress stops moving for drainIdle, or
// drainLimit passes.
func (r *runner) drain(ctx context.Context, done func() bool, progress func() int64) {
	limit := time.Now().Add(drainLimit)
	last, lastMove := progress(), time.Now()
	for !done() && ctx.Err() == nil && time.Now().Before(limit) {
		sleepCtx(ctx, 2*time.Millisecond)
		if p := progress(); p != last {
			last, lastMove = p, time.Now()
		} else if time.Since(lastMove) > drainIdle {
			return
		}
	}
}

// pubStats is what the publisher did.
type pubStats struct {
	sent   int64
	nobody int64 // PUBLISHes no DMB node received
	stalls int64 // times the window was full
	maxLag time.Duration
}

// publishBatchMax is the most commands in one pipeline.
const publishBatchMax = 128

// publish sends broadcast or direct messages from start until end: at -rate
// (message k is due at start + k/rate; late ones go at once, in one
// pipeline), or as fast as the window allows. Each message carries its
// sequence number (from 1) and the time it was encoded.
func (r *runner) publish(ctx context.Context, direct bool, start, end time.Time) (pubStats, error) {
	o := r.o
	room := o.Scenario == scenarioRoom
	var st pubStats
	channel := r.be.downlink()
	arena := make([]byte, 0, publishBatchMax*(o.Payload+128))
	cmds := make([][]byte, 0, publishBatchMax)
	var seq int64
	credit := 0
	next := 0 // direct: the next client in turn
	for {
		now := time.Now()
		if !now.Before(end) || ctx.Err() != nil {
			return st, nil
		}
		n := publishBatchMax
		if o.Rate > 0 {
			due := int64(now.Sub(start).Seconds()*o.Rate) + 1 - seq
			if due <= 0 {
				at := start.Add(time.Duration(float64(seq) / o.Rate * 1e9))
				sleepCtx(ctx, min(time.Until(at), time.Until(end)))
				continue
			}
			st.maxLag = max(st.maxLag, now.Sub(start.Add(time.Duration(float64(seq)/o.Rate*1e9))))
			n = min(n, int(due))
		}
		if credit <= 0 {
			if credit = r.credit(direct || room, seq); credit <= 0 {
				st.stalls++
				sleepCtx(ctx, 200*time.Microsecond)
				continue
			}
		}
		n = min(n, credit)
		arena, cmds = arena[:0], cmds[:0]
		for range n {
			mark := len(arena)
			t := r.clock.now()
			if room {
				k := int(seq % int64(len(r.roomNames)))
				for _, c := range r.members[k] {
					c.sentTo.Add(1)
				}
				arena = appendRoom(arena, r.roomNames[k], seq+1, t, o.Payload, r.pad)
			} else if direct {
				c := r.nextLive(&next)
				if c == nil {
					return st, errors.New("every client is gone")
				}
				c.sentTo.Add(1)
				arena = appendDirect(arena, c.cid, seq+1, t, o.Payload, r.pad)
			} else {
				arena = appendBroadcast(arena, seq+1, t, o.Payload, r.pad)
			}
			seq++
			cmds = append(cmds, arena[mark:len(arena):len(arena)])
		}
		nobody, err := r.be.publishBatch(ctx, channel, cmds)
		if err != nil {
			if ctx.Err() != nil {
				return st, nil
			}
			// What Redis did with the batch is unknown: count it as sent, so
			// that anything lost shows as loss.
			st.sent = seq
			return st, err
		}
		st.sent, st.nobody = seq, st.nobody+int64(nobody)
		credit -= n
	}
}

// credit is how many more messages may go now: the window less what is in
// flight. Broadcast counts what the slowest client has not received yet;
// direct and room (direct true), what all clients have not received yet.
// Gone clients do not count. Resume has no window: its clients fall
// behind while they resume, and the rate bounds what is in flight.
func (r *runner) credit(direct bool, sent int64) int {
	if r.resumer != nil {
		return publishBatchMax
	}
	var inflight int64
	if direct {
		for _, c := range r.clients {
			if !c.gone.Load() {
				inflight += c.sentTo.Load() - c.received.Load()
			}
		}
	} else {
		lowest := int64(-1)
		for _, c := range r.clients {
			if n := c.received.Load(); !c.gone.Load() && (lowest < 0 || n < lowest) {
				lowest = n
			}
		}
		if lowest < 0 {
			return 0
		}
		inflight = sent - lowest
	}
	return r.o.Window - int(inflight)
}

// nextLive returns the next client in turn that is still connected.
func (r *runner) nextLive(next *int) *client {
	for range r.clients {
		c := r.clients[*next]
		*next = (*next + 1) % len(r.clients)
		if !c.gone.Load() {
			return c
		}
	}
	return nil
}

// uplink runs the uplink scenario: every client sends for the duration,
// then the generator waits for the answers and for the backend.
func (r *runner) uplink(ctx context.Context) {
	o := r.o
	fmt.Fprintf(r.progress, "uplink from %d clients for %v at %s each, window %d per client\n", len(r.clients), o.Duration, rateText(o.Rate, "frames/s"), o.Window)
	t0 := time.Now()
	end := t0.Add(o.Duration)
	sctx, stopSending := context.WithDeadline(ctx, end)
	defer stopSending()
	for i, c := range r.clients {
		var offset time.Duration
		if o.Rate > 0 { // spread the clients' sends over one interval
			offset = time.Duration(float64(time.Second) / o.Rate * float64(i) / float64(len(r.clients)))
		}
		r.senders.Add(1)
		go func() {
			defer r.senders.Done()
			c.sendLoop(sctx, t0, end, offset, o.Rate)
		}()
	}
	stopProgress := r.every(time.Second, func() {
		fmt.Fprintf(r.progress, "  %d acked, backend received %d\n", r.sum(func(u *uplinkState) int64 { return u.acked.Load() }), r.backendMessages())
	})
	sendersDone := make(chan struct{})
	go func() {
		r.senders.Wait()
		close(sendersDone)
	}()
	select {
	case <-sendersDone:
	case <-time.After(time.Until(end) + drainLimit): // a Write stuck on a stalled connection
	}
	t1 := time.Now()
	answered := func() int64 {
		return r.sum(func(u *uplinkState) int64 { return u.acked.Load() + u.errored.Load() })
	}
	r.drain(context.WithoutCancel(ctx), func() bool {
		return answered() >= r.sum(func(u *uplinkState) int64 { return u.sent.Load() }) &&
			r.backendMessages() >= r.sum(func(u *uplinkState) int64 { return u.acked.Load() })
	}, func() int64 { return answered() + r.backendMessages() })
	tD := time.Now()
	stopProgress()
	r.sampleEnd(ctx)

	// The counters are read once the readers have stopped.
	r.closeClients()
	res := &uplinkResult{
		Sent:            r.sum(func(u *uplinkState) int64 { return u.sent.Load() }),
		Acked:           r.sum(func(u *uplinkState) int64 { return u.acked.Load() }),
		Errors:          r.sum(func(u *uplinkState) int64 { return u.errored.Load() }),
		BackendReceived: r.backendMessages(),
		WindowSeconds:   round3(t1.Sub(t0).Seconds()),
		DrainSeconds:    round3(tD.Sub(t1).Seconds()),
	}
	res.Unanswered = res.Sent - res.Acked - res.Errors
	res.Dropped, res.DropCodes = r.dropped()
	for _, c := range r.clients {
		res.StrayErrors += c.strayErrs
		res.Undecoded += c.undecoded
		res.UntimedAcks += c.untimedAcks
	}
	res.AcksPerSecond = round1(float64(res.Acked) / tD.Sub(t0).Seconds())
	res.AckLatency = r.lat.summary()
	res.BackendLatency = r.beLat.summary()
	for _, lb := range r.bes {
		res.BackendReordered += lb.reordered.Load()
		res.BackendUndecoded += lb.undecoded.Load()
		res.BackendReceivedEach = append(res.BackendReceivedEach, lb.messages.Load())
	}
	if cpu := r.serverCPU(); cpu > 0 {
		res.MessagesPerServerCPUSecond = round1(float64(res.Acked) / cpu)
	}
	r.rep.Results.uplinkResult = res
}

// backendMessages is the uplink messages all backends received.
func (r *runner) backendMessages() int64 {
	var n int64
	for _, lb := range r.bes {
		n += lb.messages.Load()
	}
	return n
}

// sum adds up one uplink counter over the clients.
func (r *runner) sum(f func(*uplinkState) int64) int64 {
	var n int64
	for _, c := range r.clients {
		n += f(c.up)
	}
	return n
}

// closeClients closes every connection with 1000, -inflight at a time,
// and waits for the readers and senders. It runs once; later calls return
// at once.
func (r *runner) closeClients() {
	if r.clients == nil || r.clients[0].closing.Load() {
		return
	}
	for _, c := range r.clients {
		c.closing.Store(true)
	}
	if r.stopResum != nil { // a resume under way gives up
		r.stopResum()
	}
	work := make(chan *client)
	var wg sync.WaitGroup
	for range min(r.o.Inflight, len(r.clients)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				c.close(websocket.StatusNormalClosure, "load run over")
			}
		}()
	}
	for _, c := range r.clients {
		work <- c
	}
	close(work)
	wg.Wait()
	r.senders.Wait()
}

// fillServer fills the report's server, generator and Redis sections from
// the samples.
func (r *runner) fillServer() {
	// The wall time of the window, from the generator's clock: the metrics
	// samples carry no time when DMB's /metrics could not be read.
	wall := r.end.At.Sub(r.start.At).Seconds()
	gen := (r.genEnd - r.genStart).Seconds()
	r.rep.Generator.CPUSeconds = round3(gen)
	if r.redisErr == nil {
		r.rep.Redis.CPUSeconds = round3(r.redisEnd - r.redisStart)
	} else {
		r.rep.Redis.Error = r.redisErr.Error()
	}
	if wall > 0 {
		r.rep.Generator.CPUCores = round3(gen / wall)
		r.rep.Redis.CPUCores = round3(r.rep.Redis.CPUSeconds / wall)
	}

	s := &r.rep.Server
	if s.MetricsError != "" {
		return
	}
	s.RSSBefore, s.RSSAfter = r.before.RSS, r.end.RSS
	s.HeapInuseBefore, s.HeapInuseAfter = r.before.HeapInuse, r.end.HeapInuse
	s.GoroutinesBefore, s.GoroutinesAfter = r.before.Goroutines, r.end.Goroutines
	s.ConnectionsAfter = r.end.Connections
	s.CPUSeconds = round3(r.serverCPU())
	s.CPUWallSeconds = round3(wall)
	if wall > 0 {
		s.CPUCores = round3(s.CPUSeconds / wall)
	}
	s.Drops = deltas(r.before.Drops, r.end.Drops)
	s.Disconnects = deltas(r.before.Disconnects, r.end.Disconnects)
	c := &r.rep.Results.Connect
	c.ServerCPUSeconds = round3(r.start.CPU - r.before.CPU)
	if c.ServerCPUSeconds > 0 {
		c.PerServerCPUSecond = round1(float64(c.Connected) / c.ServerCPUSeconds)
	}
}

func rateText(rate float64, unit string) string {
	if rate == 0 {
		return "full speed"
	}
	return strconv.FormatFloat(rate, 'g', -1, 64) + " " + unit
}

// drainNode posts /drain to -drain's node at -drain-after from start.
func (r *runner) drainNode(ctx context.Context, start time.Time) *drainResult {
	res := &drainResult{URL: r.o.Drain}
	sleepCtx(ctx, time.Until(start.Add(r.o.DrainAfter)))
	if err := ctx.Err(); err != nil {
		res.Error = err.Error()
		return res
	}
	res.AtSeconds = round3(time.Since(start).Seconds())
	fmt.Fprintf(r.progress, "draining %s\n", r.o.Drain)
	status, err := postDrain(ctx, r.mhc, r.o.Drain)
	res.Status = status
	if err != nil {
		res.Error = err.Error()
		fmt.Fprintf(r.progress, "drain: %v\n", err)
	}
	return res
}

// resumeResult sums up the resumes once the readers have stopped; drained
// gives the drain's outcome, when there was one.
func (r *runner) resumeResult(sent int64, drained chan *drainResult) *resumeResult {
	rs := r.resumer
	res := &resumeResult{
		ClientsPerNode:    r.perNode,
		ExpectedPerClient: sent,
		Drops:             rs.drops.Load(),
		DropCodes:         rs.codes,
		Resumes:           rs.resumed.Load(),
		Unrecovered:       rs.unrecovered.Load(),
		FreshSessions:     rs.fresh.Load(),
		CIDChanged:        rs.cidChanged.Load(),
		Failed:            rs.failed.Load(),
		ResumeLatency:     rs.lat.summary(),
	}
	for _, e := range r.nodes {
		res.Nodes = append(res.Nodes, e.url)
	}
	if drained != nil {
		res.Drain = <-drained
	}
	for _, c := range r.clients {
		if c.rs.missing(sent) > 0 {
			res.ClientsLosing++
		}
		if c.rs.drops > 0 {
			res.ClientsDropped++
			if c.rs.resumes == c.rs.drops {
				res.ClientsResumed++
			}
		}
	}
	return res
}
