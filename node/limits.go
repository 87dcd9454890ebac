package node

import (
	"log/slog"
	"net"
	"runtime"

	"github.com/dmb-broker/dmb/config"
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

// sendBufferListener sets the kernel's send buffer of each connection it
// accepts (DMB_CLIENT_SEND_BUFFER). Left to itself, Linux gives a loopback
// or fast connection 4 MB at once: a hundred clients that never read,
// under 256 kB broadcasts, had the node copy 400 MB into the kernel before
// their queues' bound noticed them, and the honest clients' acks waited up
// to a third of a second meanwhile (docs/limits.md).
type sendBufferListener struct {
	net.Listener
	size int
}

// withSendBuffer is ln with its connections' send buffer set to size
// bytes; ln itself when size is 0.
func withSendBuffer(ln net.Listener, size int) net.Listener {
	if size <= 0 {
		return ln
	}
	return sendBufferListener{ln, size}
}

func (l sendBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.size) // a connection that refuses keeps the kernel's
	}
	return c, nil
}
