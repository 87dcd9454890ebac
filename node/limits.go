package node

import (
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/netyield"
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
type clientListener struct {
	net.Listener
	sendBuffer int
	taken      atomic.Uint32
	yield      *netyield.Yielder // nil: runtime.Gosched
}

// listenClients wraps ln, a listener of client connections; closing the
// clientListener closes ln.
func listenClients(ln net.Listener, sendBuffer int) *clientListener {
	y, _ := netyield.Start() // without it (no pipe), yields fall back to runtime.Gosched
	return &clientListener{Listener: ln, sendBuffer: sendBuffer, yield: y}
}

func (l *clientListener) Accept() (net.Conn, error) {
	if l.taken.Add(1)%acceptTurn == 0 {
		l.yield.Yield()
	}
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok && l.sendBuffer > 0 {
		_ = tc.SetWriteBuffer(l.sendBuffer) // a connection that refuses keeps the kernel's
	}
	return c, nil
}

// Close closes the listener, then stops its Yielder.
func (l *clientListener) Close() error {
	err := l.Listener.Close()
	_ = l.yield.Close()
	return err
}
