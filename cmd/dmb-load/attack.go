package main

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/protocol"
)

// The attacks (-attack KINDS) are the floods DMB bounds besides the frame
// flood (-flood), each at a fixed strength, run like it beside any
// scenario from the start of the measured window to its end, from the
// flooders' source address, so that the honest clients' figures say what
// they cost (docs/limits.md):
//
//   - slow: 100 clients of SERVICE-attack that never read, reconnecting
//     when DMB drops them, while a backend of that service broadcasts
//     256 kB messages 40 times a second;
//   - big: that backend also publishes 900 kB and 1.5 MB broadcasts (the
//     second over DMB_MAX_BACKEND_BYTES' default), 20 a second each;
//   - trickle: 500 connections that send an HTTP request a byte every
//     200 ms, and 500 WebSocket clients of SERVICE that send half a frame
//     and stop, each opened again when DMB cuts it;
//   - unknown: 20,000 publishes a second on downlink channels of bkids
//     DMB never issued, each a new one;
//   - refused: 4 connections at a time that ask, one handshake after
//     another, for a service nobody serves;
//   - register: 2,000 bk_connect a second, each for a new service. They
//     fill the registry (up to DMB_MAX_SERVICES) with services that stay
//     until DMB_BACKEND_RETENTION: run it against a Redis you throw away.
//
// One more kind is no attack: bulk is slow's broadcasts without its
// clients, the baseline that tells what slow's clients themselves cost.
// all leaves it out.
const (
	attackSlow     = "slow"
	attackBig      = "big"
	attackTrickle  = "trickle"
	attackUnknown  = "unknown"
	attackRefused  = "refused"
	attackRegister = "register"
	attackBulk     = "bulk"
	attackAll      = "all"

	slowClients   = 100
	slowPayload   = 256 << 10
	slowRate      = 40 // broadcasts a second
	bigRate       = 20 // broadcasts a second of each size
	trickles      = 500
	halfFrames    = 500
	trickleEvery  = 200 * time.Millisecond
	unknownRate   = 20000 // publishes a second
	refusers      = 4
	registerRate  = 2000 // bk_connect a second
	attackTick    = 10 * time.Millisecond
	slowPoke      = 500 * time.Millisecond // how often a slow client writes a ping
	attackSuffix  = "-attack"              // the service of slow and big
	nobodySuffix  = "-nobody"              // the service refused asks for
	junkSuffix    = "-junk-"               // register's services: SERVICE-junk-RUN-N
	halfFrameSize = 1000
)

// allAttacks are the kinds that all names; attackKinds are every kind, in
// the order the report lists them.
var (
	allAttacks  = []string{attackSlow, attackBig, attackTrickle, attackUnknown, attackRefused, attackRegister}
	attackKinds = append(slices.Clip(allAttacks), attackBulk)
)

// bigPayloads are big's broadcast sizes.
var bigPayloads = []int{900 << 10, 1536 << 10}

// parseAttacks reads -attack: kinds, comma-separated, or all; "" is none.
func parseAttacks(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var kinds []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		switch {
		case k == attackAll:
			kinds = append(kinds, allAttacks...)
		case slices.Contains(attackKinds, k):
			kinds = append(kinds, k)
		default:
			return nil, fmt.Errorf("-attack %q: want all or some of %s, comma-separated", s, strings.Join(attackKinds, ", "))
		}
	}
	var out []string
	for _, k := range attackKinds { // in order, once each
		if slices.Contains(kinds, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// attackFiles is the open files the attacks of kinds hold at most.
func attackFiles(kinds []string) int {
	n := 0
	for _, k := range kinds {
		switch k {
		case attackSlow:
			n += slowClients
		case attackTrickle:
			n += trickles + halfFrames
		case attackRefused:
			n += refusers
		}
	}
	if len(kinds) > 0 {
		n += 16 // the attacks' Redis connections
	}
	return n
}

// attack is the running attacks. Its goroutines are started by
// startAttack and stopped, every one, by stop.
type attack struct {
	kinds  []string
	source string
	d      *net.Dialer
	ch     protocol.Channels
	rdb    *redis.Client
	be     *loadBackend // SERVICE-attack's backend, for slow and big

	honest, target, nobody *endpoint // SERVICE's, SERVICE-attack's and SERVICE-nobody's WebSocket URLs
	junk                   string    // register's services' prefix

	cancel     context.CancelFunc
	wg         sync.WaitGroup
	once       sync.Once
	start, end time.Time

	counts  map[string]map[string]*atomic.Int64 // kind -> what -> count; fixed at the start
	mu      sync.Mutex
	reasons map[string]int // refused: what DMB answered, by reason
}

// counters are what each kind counts.
var counters = map[string][]string{
	attackSlow:     {"connections", "dropped", "handshakes_failed", "broadcasts", "publish_errors"},
	attackBig:      {"broadcasts", "publish_errors"},
	attackTrickle:  {"requests", "requests_cut", "request_ms_held", "half_frames", "half_frames_cut", "half_frame_ms_held", "handshakes_failed"},
	attackUnknown:  {"publishes", "publish_errors"},
	attackRefused:  {"handshakes", "sessions"},
	attackRegister: {"requests", "publish_errors"},
	attackBulk:     {"broadcasts", "publish_errors"},
}

// startAttack registers SERVICE-attack's backend when slow, big or bulk
// needs it, and starts the attacks of o.attacks; they run until stop or the end
// of ctx.
func startAttack(ctx context.Context, o *options) (*attack, error) {
	src := floodSource(o)
	a := &attack{
		kinds: o.attacks, source: src.String(), d: dialer(src), ch: protocol.NewChannels(o.Prefix),
		junk:   o.Service + junkSuffix + strconv.FormatUint(mrand.Uint64N(1e9), 36) + "-",
		counts: map[string]map[string]*atomic.Int64{}, reasons: map[string]int{},
	}
	if !src.IsValid() {
		a.source = "::1"
	}
	for _, k := range a.kinds {
		a.counts[k] = map[string]*atomic.Int64{}
		for _, what := range counters[k] {
			a.counts[k][what] = new(atomic.Int64)
		}
	}
	base := strings.TrimSuffix(o.wsURL(), "/"+o.Service)
	var err error
	for _, e := range []struct {
		ep      **endpoint
		service string
	}{{&a.honest, o.Service}, {&a.target, o.Service + attackSuffix}, {&a.nobody, o.Service + nobodySuffix}} {
		if *e.ep, err = newEndpoint(base + "/" + e.service); err != nil {
			return nil, err
		}
	}
	a.rdb = redis.NewClient(&redis.Options{Addr: o.Redis, Dialer: redisDialer, MaxRetries: -1, DialTimeout: 5 * time.Second, PoolSize: 8})
	if a.has(attackSlow) || a.has(attackBig) || a.has(attackBulk) {
		if err := a.register(ctx, o); err != nil {
			_ = a.rdb.Close()
			return nil, err
		}
	}
	ctx, a.cancel = context.WithCancel(ctx)
	a.start = time.Now()
	for _, k := range a.kinds {
		switch k {
		case attackSlow:
			a.spawn(slowClients, func() { a.slowClient(ctx) })
			a.spawn(1, func() { a.broadcast(ctx, attackSlow, slowRate, slowPayload) })
		case attackBulk:
			a.spawn(1, func() { a.broadcast(ctx, attackBulk, slowRate, slowPayload) })
		case attackBig:
			for _, size := range bigPayloads {
				a.spawn(1, func() { a.broadcast(ctx, attackBig, bigRate, size) })
			}
		case attackTrickle:
			a.spawn(trickles, func() { a.trickle(ctx) })
			a.spawn(halfFrames, func() { a.halfFrame(ctx) })
		case attackUnknown:
			a.spawn(1, func() { a.unknown(ctx) })
		case attackRefused:
			a.spawn(refusers, func() { a.refused(ctx) })
		case attackRegister:
			a.spawn(1, func() { a.registerFlood(ctx) })
		}
	}
	return a, nil
}

// register registers SERVICE-attack's backend, as the scenarios register
// theirs, and waits until it listens.
func (a *attack) register(ctx context.Context, o *options) error {
	bo := *o
	bo.Service = o.Service + attackSuffix
	lb, err := startBackend(ctx, &bo, &runClock{start: time.Now()}, &histogram{}, o.logger(io.Discard))
	if err != nil {
		return fmt.Errorf("the attack's backend: %w", err)
	}
	a.be = lb
	return nil
}

// stopBackend stops SERVICE-attack's backend, if there is one.
func (a *attack) stopBackend() {
	if a.be != nil {
		a.be.close()
		a.be = nil
	}
}

func (a *attack) has(kind string) bool { return slices.Contains(a.kinds, kind) }

// spawn starts n goroutines running f, which stop with the attack.
func (a *attack) spawn(n int, f func()) {
	for range n {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			f()
		}()
	}
}

// add counts n of what for kind.
func (a *attack) add(kind, what string, n int64) { a.counts[kind][what].Add(n) }

// stop ends the attacks, waits for every goroutine, and stops the
// backend. It may be called more than once, and on a nil attack.
func (a *attack) stop() {
	if a == nil {
		return
	}
	a.once.Do(func() {
		a.end = time.Now()
		a.cancel()
		a.wg.Wait()
		a.stopBackend()
		_ = a.rdb.Close()
	})
}

// dial connects from the flooders' address; a failure pauses a moment,
// so that an attacker does not spin while the node is away.
func (a *attack) dial(ctx context.Context) net.Conn {
	nc, err := a.d.DialContext(ctx, "tcp", a.honest.addr)
	if err != nil {
		sleepCtx(ctx, floodDialPause)
		return nil
	}
	return nc
}

// upgrade makes the WebSocket handshake with ep on a new connection; it
// returns nil (counted for kind) when there is no session.
func (a *attack) upgrade(ctx context.Context, kind string, ep *endpoint) net.Conn {
	nc := a.dial(ctx)
	if nc == nil {
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	c, err := upgradeClient(hctx, nc, ep, 4096)
	if err != nil {
		if ctx.Err() == nil {
			a.add(kind, "handshakes_failed", 1)
			sleepCtx(ctx, floodDialPause)
		}
		return nil
	}
	return c.conn.Conn
}

// slowClient connects to SERVICE-attack and never reads; it writes a ping
// now and then, which fails once DMB has dropped it, and then connects
// again.
func (a *attack) slowClient(ctx context.Context) {
	ping := wsframe.AppendMasked(nil, wsframe.OpPing, nil, [4]byte{1, 2, 3, 4})
	for ctx.Err() == nil {
		nc := a.upgrade(ctx, attackSlow, a.target)
		if nc == nil {
			continue
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		a.add(attackSlow, "connections", 1)
		for {
			sleepCtx(ctx, slowPoke)
			if ctx.Err() != nil {
				break
			}
			_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := nc.Write(ping); err != nil {
				a.add(attackSlow, "dropped", 1)
				break
			}
		}
		_ = nc.Close()
	}
}

// broadcast publishes broadcasts of size bytes on SERVICE-attack's
// downlink, rate a second, counted for kind.
func (a *attack) broadcast(ctx context.Context, kind string, rate, size int) {
	payload := `{"type":"broadcast","data":"` + strings.Repeat("x", size) + `"}`
	channel := a.ch.Downlink(a.be.b.BKID())
	a.paced(ctx, rate, func(n int) {
		pipe := a.rdb.Pipeline()
		for range n {
			pipe.Publish(ctx, channel, payload)
		}
		a.exec(ctx, kind, "broadcasts", pipe, n)
	})
}

// exec runs a pipeline of n publishes, counted for kind as what or as
// publish errors.
func (a *attack) exec(ctx context.Context, kind, what string, pipe redis.Pipeliner, n int) {
	if _, err := pipe.Exec(ctx); err != nil {
		if ctx.Err() == nil {
			a.add(kind, "publish_errors", int64(n))
			sleepCtx(ctx, floodDialPause)
		}
		return
	}
	a.add(kind, what, int64(n))
}

// paced calls send with the number due, every attackTick, so that rate
// are sent a second, until ctx ends.
func (a *attack) paced(ctx context.Context, rate int, send func(n int)) {
	tick := time.NewTicker(attackTick)
	defer tick.Stop()
	start := time.Now()
	sent := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if due := int(time.Since(start).Seconds()*float64(rate)) - sent; due > 0 {
			send(due)
			sent += due
		}
	}
}

// trickle sends an HTTP request a byte at a time until DMB cuts it, and
// again.
func (a *attack) trickle(ctx context.Context) {
	req := []byte("GET /healthz HTTP/1.1\r\nHost: " + a.honest.addr + "\r\nX-Slow: " + strings.Repeat("a", 4000))
	// The first bytes of the trickles are spread over one interval.
	sleepCtx(ctx, mrand.N(trickleEvery))
	for ctx.Err() == nil {
		nc := a.dial(ctx)
		if nc == nil {
			continue
		}
		a.add(attackTrickle, "requests", 1)
		start := time.Now()
		tick := time.NewTicker(trickleEvery)
		for i := 0; i < len(req) && ctx.Err() == nil; i++ {
			if _, err := nc.Write(req[i : i+1]); err != nil {
				a.add(attackTrickle, "requests_cut", 1)
				a.add(attackTrickle, "request_ms_held", time.Since(start).Milliseconds())
				break
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
		tick.Stop()
		_ = nc.Close()
	}
}

// halfFrame opens a WebSocket session of SERVICE, sends half a frame and
// waits until DMB cuts it, and again.
func (a *attack) halfFrame(ctx context.Context) {
	frame := wsframe.AppendMasked(nil, wsframe.OpText, make([]byte, halfFrameSize), [4]byte{1, 2, 3, 4})
	sleepCtx(ctx, mrand.N(trickleEvery))
	for ctx.Err() == nil {
		nc := a.upgrade(ctx, attackTrickle, a.honest)
		if nc == nil {
			continue
		}
		a.add(attackTrickle, "half_frames", 1)
		start := time.Now()
		stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
		if _, err := nc.Write(frame[:len(frame)/10]); err == nil {
			_, _ = io.Copy(io.Discard, nc) // until DMB cuts it
		}
		if stop() { // not the end of the attack
			a.add(attackTrickle, "half_frames_cut", 1)
			a.add(attackTrickle, "half_frame_ms_held", time.Since(start).Milliseconds())
		}
		_ = nc.Close()
	}
}

// unknown publishes on the downlink channels of bkids DMB never issued,
// a new one each time.
func (a *attack) unknown(ctx context.Context) {
	const payload = `{"type":"broadcast","data":1}`
	a.paced(ctx, unknownRate, func(n int) {
		pipe := a.rdb.Pipeline()
		for range n {
			pipe.Publish(ctx, a.ch.Downlink(strconv.FormatUint(9e15+mrand.Uint64N(9e15), 10)), payload)
		}
		a.exec(ctx, attackUnknown, "publishes", pipe, n)
	})
}

// refused asks, one handshake after another, for a service nobody
// serves, and counts what DMB answers.
func (a *attack) refused(ctx context.Context) {
	for ctx.Err() == nil {
		nc := a.dial(ctx)
		if nc == nil {
			continue
		}
		a.add(attackRefused, "handshakes", 1)
		hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		c, err := upgradeClient(hctx, nc, a.nobody, 4096)
		cancel()
		switch {
		case err == nil:
			a.add(attackRefused, "sessions", 1)
			_ = c.conn.Close()
		case ctx.Err() == nil:
			a.mu.Lock()
			addCount(a.reasons, failureReason(err), 1)
			a.mu.Unlock()
		}
	}
}

// registerFlood sends bk_connect for a new service each, registerRate a
// second.
func (a *attack) registerFlood(ctx context.Context) {
	n := 0
	a.paced(ctx, registerRate, func(due int) {
		pipe := a.rdb.Pipeline()
		for range due {
			n++
			pipe.Publish(ctx, a.ch.Register(), fmt.Sprintf(`{"type":"bk_connect","nonce":"%s%d","service":"%s%d"}`, a.junk, n, a.junk, n))
		}
		a.exec(ctx, attackRegister, "requests", pipe, due)
	})
}

// attackReport is the attacks' section of the report.
type attackReport struct {
	Kinds   []string                    `json:"kinds"`
	Source  string                      `json:"source"`
	Seconds float64                     `json:"seconds"`
	Counts  map[string]map[string]int64 `json:"counts"`  // kind -> what -> count
	Refused map[string]int              `json:"refused"` // refused: DMB's answers, by reason
}

// report sums the attacks up, once they stopped.
func (a *attack) report() *attackReport {
	r := &attackReport{Kinds: a.kinds, Source: a.source, Seconds: round3(a.end.Sub(a.start).Seconds()), Counts: map[string]map[string]int64{}}
	for k, m := range a.counts {
		r.Counts[k] = map[string]int64{}
		for what, n := range m {
			r.Counts[k][what] = n.Load()
		}
	}
	a.mu.Lock()
	r.Refused = a.reasons
	a.mu.Unlock()
	return r
}

// attackText is the attacks' rows of the table.
func attackText(row func(k, format string, a ...any), ar *attackReport) {
	row("attacks", "%s from %s for %.2f s", strings.Join(ar.Kinds, ", "), ar.Source, ar.Seconds)
	for _, k := range ar.Kinds {
		c := ar.Counts[k]
		switch k {
		case attackSlow:
			row("  slow", "%d clients that never read: %d sessions, %d dropped by DMB, %d handshakes failed; %d broadcasts of %d kB (%d failed)",
				slowClients, c["connections"], c["dropped"], c["handshakes_failed"], c["broadcasts"], slowPayload>>10, c["publish_errors"])
		case attackBig:
			row("  big", "%d broadcasts of 900 kB and 1.5 MB (%d failed)", c["broadcasts"], c["publish_errors"])
		case attackBulk:
			row("  bulk", "%d broadcasts of %d kB, to no client (%d failed)", c["broadcasts"], slowPayload>>10, c["publish_errors"])
		case attackTrickle:
			row("  trickle", "%d trickled requests, %d cut after %s on average; %d half frames, %d cut after %s on average; %d handshakes failed",
				c["requests"], c["requests_cut"], meanMS(c["request_ms_held"], c["requests_cut"]),
				c["half_frames"], c["half_frames_cut"], meanMS(c["half_frame_ms_held"], c["half_frames_cut"]), c["handshakes_failed"])
		case attackUnknown:
			row("  unknown", "%d publishes to unknown bkids (%d failed)", c["publishes"], c["publish_errors"])
		case attackRefused:
			row("  refused", "%d handshakes for a service nobody serves: %s; %d sessions", c["handshakes"], orNone(ar.Refused), c["sessions"])
		case attackRegister:
			row("  register", "%d bk_connect for new services (%d failed)", c["requests"], c["publish_errors"])
		}
	}
}

// meanMS is sum/n milliseconds as a duration, or "-" when n is 0.
func meanMS(sum, n int64) string {
	if n == 0 {
		return "-"
	}
	return (time.Duration(sum/n) * time.Millisecond).String()
}
