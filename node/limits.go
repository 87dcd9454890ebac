package node

import (
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/netyield"
	"github.com/dmb-broker/dmb/internal/ratelimit"
)

// fdReserve is the descriptors a node keeps for itself besides its
// clients: its listeners, Redis connections beyond the pool (the
// subscriptions, a cluster's masters), files, and some slack.
const fdReserve = 64

// maxClients is the clients a node admits: DMB_MAX_CLIENTS, or, when it is
// 0, what the open-file limit leaves once Redis's pool and fdReserve are
// kept, so that clients never take the descriptors Redis needs. It warns
// when DMB_MAX_CLIENTS asks for more than the limit allows, and says what
// it chose.
func maxClients(cfg config.Config, log *slog.Logger) int {
	limit := openFileLimit()
	pool := cfg.RedisPoolSize
	if pool == 0 {
		pool = 10 * runtime.GOMAXPROCS(0) // go-redis's default
	}
	keep := uint64(pool + fdReserve)
	allowed := 0
	if limit > keep {
		allowed = int(min(limit-keep, 1<<30))
	}
	switch {
	case limit == 0:
		return cfg.MaxClients // no limit to read: only the setting bounds
	case cfg.MaxClients == 0:
		if allowed < 10000 {
			log.Warn("the open-file limit allows few clients: raise it (ulimit -n, LimitNOFILE=) or set DMB_MAX_CLIENTS",
				"open_file_limit", limit, "max_clients", allowed)
		} else {
			log.Info("clients bounded by the open-file limit", "open_file_limit", limit, "max_clients", allowed)
		}
		return max(allowed, 1)
	case cfg.MaxClients > allowed:
		log.Warn("DMB_MAX_CLIENTS is more than the open-file limit allows: clients may take the descriptors Redis needs; raise the limit (ulimit -n, LimitNOFILE=)",
			"max_clients", cfg.MaxClients, "open_file_limit", limit, "allowed", allowed)
	}
	return cfg.MaxClients
}

// acceptTurn is the connections a clientListener takes in a turn.
const acceptTurn = 16

// clientListener is how a node takes its clients' connections. Every
// acceptTurn connections it yields the processor, so that the accept loop
// takes its turn like every other goroutine. Without it, a burst of a
// thousand connections in the kernel's backlog was taken in one time
// slice, and the goroutines serving them all became runnable at once
// ahead of the clients already connected: their acks waited 100 to 300 ms
// behind the handshakes (docs/limits.md). The rest of a burst waits in the
// kernel's backlog instead. Yielding at every connection cost a third of
// the handshakes per CPU-second; every 16th costs nothing measurable.
//
// It yields through a netyield.Yielder, not runtime.Gosched: Go looks for
// goroutines that the network has woken only when a processor runs out of
// work, so with a burst's goroutines always ready to run, a connected
// client's frame waited for the runtime's monitor, up to 10 ms. Under 500
// connections reopened as the node cuts them (dmb-load -attack trickle),
// honest ack p99 2.3 to 4.6 ms against 2.6 to 14.5 ms (7 rounds); 1 to 4%
// fewer handshakes a second in a burst.
//
// It also sets the kernel's send buffer of each connection
// (DMB_CLIENT_SEND_BUFFER; 0 leaves the kernel's). Left to itself, Linux
// gives a loopback or fast connection 4 MB at once: a hundred clients
// that never read, under 256 kB broadcasts, had the node copy 400 MB into
// the kernel before their queues' bound noticed them, and the honest
// clients' acks waited up to a third of a second meanwhile.
//
// And it takes connections no faster than the node's accept pace
// (DMB_ACCEPT_RATE), shared by all its client listeners.
type clientListener struct {
	net.Listener
	sendBuffer int
	taken      atomic.Uint32
	yield      *netyield.Yielder // nil: runtime.Gosched
	pace       *acceptPace       // nil: no pace
	closed     chan struct{}
	closeOnce  sync.Once
}

// listenClients wraps ln, a listener of client connections; closing the
// clientListener closes ln.
func listenClients(ln net.Listener, sendBuffer int, pace *acceptPace) *clientListener {
	y, _ := netyield.Start() // without it (no pipe), yields fall back to runtime.Gosched
	return &clientListener{Listener: ln, sendBuffer: sendBuffer, yield: y, pace: pace, closed: make(chan struct{})}
}

func (l *clientListener) Accept() (net.Conn, error) {
	if l.taken.Add(1)%acceptTurn == 0 {
		l.yield.Yield()
	}
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !l.pace.wait(l.closed) {
		_ = c.Close()
		return nil, fmt.Errorf("accept: waiting for the accept pace: %w", net.ErrClosed)
	}
	if tc, ok := c.(*net.TCPConn); ok && l.sendBuffer > 0 {
		_ = tc.SetWriteBuffer(l.sendBuffer) // a connection that refuses keeps the kernel's
	}
	return c, nil
}

// Close closes the listener, then stops its Yielder.
func (l *clientListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	err := l.Listener.Close()
	_ = l.yield.Close()
	return err
}

// acceptPace is how fast a node takes new connections from its client
// listeners, all of them together: DMB_ACCEPT_RATE a second, in bursts of
// a hundredth of a second's worth. A connection beyond it waits for its
// turn, unread: the one a listener took, and the others in the kernel's
// backlog behind it. None is refused for it.
//
// It bounds what handshakes may take of the node's CPU whatever addresses
// they come from: a flood from many addresses, or from behind a trusted
// proxy, escapes the per-address limits, and Go runs the goroutines of a
// thousand handshakes begun at once ahead of the frames of clients already
// connected. Four loops of handshakes refused with 4004 (dmb-load -attack
// refused) made 107,000 to 155,000 handshakes in 20 s and took the honest
// clients' ack p99 to 5.4-6.5 ms; at 1,000 a second they made 20,000, and
// the p99 was 1.1-3.1 ms (docs/limits.md).
type acceptPace struct {
	rate   float64
	burst  int
	paced  prometheus.Counter // connections that waited for their turn
	mu     sync.Mutex
	bucket ratelimit.Bucket
}

// newAcceptPace is the pace of rate connections a second; nil when rate
// is 0, no pace.
func newAcceptPace(rate float64, paced prometheus.Counter) *acceptPace {
	if rate <= 0 {
		return nil
	}
	return &acceptPace{rate: rate, burst: max(1, int(rate/100)), paced: paced}
}

// wait returns true when a connection just taken may be served, false if
// stop is closed first.
func (p *acceptPace) wait(stop <-chan struct{}) bool {
	if p == nil {
		return true
	}
	counted := false
	for {
		p.mu.Lock()
		ok := p.bucket.Allow(time.Now(), p.rate, p.burst)
		d := p.bucket.Wait(p.rate)
		p.mu.Unlock()
		if ok {
			return true
		}
		if !counted {
			p.paced.Inc()
			counted = true
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return false
		}
	}
}
