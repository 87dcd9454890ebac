package node

import (
	"log/slog"
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
