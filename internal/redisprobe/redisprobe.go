// Package redisprobe tells the operator when a node cannot reach Redis:
// once when it finds Redis unreachable (at start or later), with the
// address and what to check, a reminder while it stays so, and once when
// Redis answers again. The parts of the node that use Redis keep retrying
// on their own and log the detail at debug level; this package only says
// what the operator needs to act on.
package redisprobe

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Pinger is what a probe needs of a Redis client.
type Pinger interface {
	Ping(ctx context.Context) *redis.StatusCmd
}

// Config describes a probe.
type Config struct {
	// Target names the Redis the node uses, as the log should show it:
	// "localhost:6379", or the Sentinels or cluster nodes.
	Target string
	// Interval between pings; 2 s when zero.
	Interval time.Duration
	// Timeout bounds each ping; 2 s when zero.
	Timeout time.Duration
	// Remind is how often a lasting outage is logged again; 1 minute when
	// zero.
	Remind time.Duration
	Logger *slog.Logger
}

// Run pings Redis at once and then every Interval until ctx is done, and
// logs the changes between reachable and unreachable.
func Run(ctx context.Context, rdb Pinger, cfg Config) {
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Remind <= 0 {
		cfg.Remind = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	var downSince, reminded time.Time
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		err := ping(ctx, rdb, cfg.Timeout)
		if err != nil {
			// The first failure after an outage began is often a pooled
			// connection's EOF; a second ping dials and tells the cause.
			err = ping(ctx, rdb, cfg.Timeout)
		}
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		switch {
		case err != nil && downSince.IsZero():
			downSince, reminded = now, now
			log.Error("redis unreachable: clients get no backend and backends cannot register until it answers",
				"redis", cfg.Target, "err", err, "check", Hint(err, cfg.Target))
		case err != nil && now.Sub(reminded) >= cfg.Remind:
			reminded = now
			log.Warn("redis still unreachable", "redis", cfg.Target, "down_for", now.Sub(downSince).Round(time.Second),
				"err", err, "check", Hint(err, cfg.Target))
		case err == nil && !downSince.IsZero():
			log.Info("redis reachable again", "redis", cfg.Target, "down_for", now.Sub(downSince).Round(time.Second))
			downSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func ping(ctx context.Context, rdb Pinger, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return rdb.Ping(ctx).Err()
}

// Hint says what to check when err is how Redis at target failed.
func Hint(err error, target string) string {
	msg := err.Error()
	var dnsErr *net.DNSError
	switch {
	case strings.Contains(msg, "connection refused"):
		return "nothing listens at " + target + ": start Redis there, or set REDIS_HOST and REDIS_PORT " +
			"(REDIS_SENTINEL_ADDRS, REDIS_CLUSTER_ADDRS) to where it runs; `dmb -dev` runs an embedded Redis"
	case errors.As(err, &dnsErr):
		return "the host name of " + target + " does not resolve: check REDIS_HOST (or the addresses in REDIS_SENTINEL_ADDRS, REDIS_CLUSTER_ADDRS)"
	case strings.Contains(msg, "NOAUTH"), strings.Contains(msg, "WRONGPASS"), strings.Contains(msg, "invalid password"),
		strings.Contains(msg, "invalid username-password"), strings.Contains(msg, "NOPERM"):
		return "Redis refused the credentials: check REDIS_USERNAME and REDIS_PASSWORD"
	case strings.Contains(msg, "tls:"), strings.Contains(msg, "x509:"):
		return "the TLS handshake with " + target + " failed: check REDIS_TLS and the server's certificate"
	case strings.Contains(msg, "EOF"), strings.Contains(msg, "connection reset"):
		return target + " closed the connection: if the server speaks TLS, set REDIS_TLS=true; else check its logs"
	case errors.Is(err, context.DeadlineExceeded), strings.Contains(msg, "timeout"):
		return "no answer from " + target + " in time: check the host, the port, firewalls between, and that the server is not overloaded"
	}
	return "check that Redis runs at " + target + " and that the REDIS_* settings match it"
}
