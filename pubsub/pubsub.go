// Package pubsub keeps one Redis pub/sub subscription alive for as long as
// its owner runs it: it subscribes, hands every message to a handler in
// order, checks the connection's health with pings, and after any failure
// connects and subscribes again with backoff. It reports whether the
// subscription is up, so that readiness and state reloads can follow it.
//
// On a Redis Cluster (see Sharded) a Subscription uses SSUBSCRIBE, and its
// channels must share a slot (DMB's fixed subscriptions have one channel
// each); Shards keeps a changing set of shard channels over the whole
// cluster.
//
// It knows nothing of DMB's channels or payloads.
package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config describes one subscription.
type Config struct {
	Name     string   // for logs
	Channels []string // SUBSCRIBE, or SSUBSCRIBE on a cluster
	Patterns []string // PSUBSCRIBE; a cluster allows none
	// OnMessage handles one message; it runs on the subscription's goroutine,
	// so messages are handled one at a time in the order Redis sent them.
	OnMessage func(ctx context.Context, msg *redis.Message)
	// OnUp runs on the subscription's goroutine each time every channel and
	// pattern is subscribed, after a start or a reconnect, before any message
	// that follows is handled. Owners reload state here that they may have
	// missed while down.
	OnUp func(ctx context.Context)
	// OnDown runs when an established subscription fails.
	OnDown func(err error)
	// HealthInterval is how long the connection may stay silent before a
	// ping; a ping unanswered for another interval counts as a failure.
	HealthInterval time.Duration
	Logger         *slog.Logger
}

// Subscription is a subscription kept alive by Run.
type Subscription struct {
	rdb redis.UniversalClient
	cfg Config
	up  atomic.Bool
}

// New returns a subscription; nothing happens until Run.
func New(rdb redis.UniversalClient, cfg Config) *Subscription {
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Subscription{rdb: rdb, cfg: cfg}
}

// Up reports whether every channel and pattern is subscribed right now.
func (s *Subscription) Up() bool { return s.up.Load() }

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// Run subscribes and handles messages until ctx is done; it always returns
// ctx's error.
func (s *Subscription) Run(ctx context.Context) error {
	backoff := minBackoff
	failing := false // since the last time the subscription was up
	for {
		err := s.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wasUp := s.up.Swap(false)
		if wasUp {
			// A connection that got as far as subscribing starts the backoff anew.
			backoff = minBackoff
			failing = false
			if s.cfg.OnDown != nil {
				s.cfg.OnDown(err)
			}
		}
		// The first failure of an outage is a warning; the retries that
		// follow are detail (the node's Redis probe tells the operator
		// what to check, and when Redis is back).
		level := slog.LevelWarn
		if failing {
			level = slog.LevelDebug
		}
		failing = true
		s.cfg.Logger.Log(ctx, level, "redis subscription failed", "subscription", s.cfg.Name, "err", err, "retry_in", backoff)
		if cc, ok := s.rdb.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx) // a failover may have moved the slot
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		if backoff *= 2; backoff > maxBackoff {
			backoff = maxBackoff
		}
	}
}

// session runs one connection from subscribe to failure.
func (s *Subscription) session(ctx context.Context) error {
	sharded := Sharded(s.rdb)
	if sharded && len(s.cfg.Patterns) > 0 {
		return errors.New("a Redis Cluster allows no pattern subscriptions")
	}
	var ps *redis.PubSub
	if sharded {
		ps = s.rdb.SSubscribe(ctx)
	} else {
		ps = s.rdb.Subscribe(ctx)
	}
	defer ps.Close()
	// Close unblocks a Receive in progress when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()

	want := len(s.cfg.Channels) + len(s.cfg.Patterns)
	if len(s.cfg.Channels) > 0 {
		subscribe := ps.Subscribe
		if sharded {
			subscribe = ps.SSubscribe
		}
		if err := subscribe(ctx, s.cfg.Channels...); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	if len(s.cfg.Patterns) > 0 {
		if err := ps.PSubscribe(ctx, s.cfg.Patterns...); err != nil {
			return fmt.Errorf("psubscribe: %w", err)
		}
	}
	confirmed := 0
	return receive(ctx, ps, s.cfg.HealthInterval, func(m *redis.Subscription) error {
		if m.Kind == "sunsubscribe" {
			// The cluster moved the channel's slot to another shard.
			return fmt.Errorf("unsubscribed from %s by the cluster (slot moved)", m.Channel)
		}
		if confirmed++; confirmed == want {
			if s.cfg.OnUp != nil {
				s.cfg.OnUp(ctx)
			}
			s.up.Store(true)
			s.cfg.Logger.Info("redis subscription up", "subscription", s.cfg.Name)
		}
		return nil
	}, func(m *redis.Message) { handle(ctx, s.cfg.Logger, s.cfg.Name, s.cfg.OnMessage, m) })
}

// receive reads ps until it fails or ctx ends, passing on subscription
// changes and messages in order. A connection silent for interval gets a
// ping; one silent for another interval has failed.
func receive(ctx context.Context, ps *redis.PubSub, interval time.Duration,
	onSubscription func(*redis.Subscription) error, onMessage func(*redis.Message)) error {
	pingSent := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, interval)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if pingSent {
					return errors.New("health check: ping unanswered")
				}
				if err := ps.Ping(ctx); err != nil {
					return fmt.Errorf("health check: %w", err)
				}
				pingSent = true
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		pingSent = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if err := onSubscription(m); err != nil {
				return err
			}
		case *redis.Message:
			onMessage(m)
		case *redis.Pong:
		}
	}
}

// handle runs fn for one message. A panic there is a bug that a message
// triggered; it costs that message, never the subscription.
func handle(ctx context.Context, log *slog.Logger, name string, fn func(context.Context, *redis.Message), m *redis.Message) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("panic handling a message", "subscription", name,
				"channel", m.Channel, "panic", p, "stack", string(debug.Stack()))
		}
	}()
	fn(ctx, m)
}
