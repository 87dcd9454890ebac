// Package pubsub keeps one Redis pub/sub subscription alive for as long as
// its owner runs it: it subscribes, hands every message to a handler in
// order, checks the connection's health with pings, and after any failure
// connects and subscribes again with backoff. It reports whether the
// subscription is up, so that readiness and state reloads can follow it.
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
	Channels []string // SUBSCRIBE
	Patterns []string // PSUBSCRIBE
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
	for {
		err := s.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wasUp := s.up.Swap(false)
		if wasUp {
			// A connection that got as far as subscribing starts the backoff anew.
			backoff = minBackoff
			if s.cfg.OnDown != nil {
				s.cfg.OnDown(err)
			}
		}
		s.cfg.Logger.Warn("redis subscription failed", "subscription", s.cfg.Name, "err", err, "retry_in", backoff)
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
	ps := s.rdb.Subscribe(ctx)
	defer ps.Close()
	// Close unblocks a Receive in progress when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()

	want := len(s.cfg.Channels) + len(s.cfg.Patterns)
	if len(s.cfg.Channels) > 0 {
		if err := ps.Subscribe(ctx, s.cfg.Channels...); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	if len(s.cfg.Patterns) > 0 {
		if err := ps.PSubscribe(ctx, s.cfg.Patterns...); err != nil {
			return fmt.Errorf("psubscribe: %w", err)
		}
	}
	confirmed := 0
	pingSent := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.cfg.HealthInterval)
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
			if m.Kind == "subscribe" || m.Kind == "psubscribe" {
				confirmed++
				if confirmed == want {
					if s.cfg.OnUp != nil {
						s.cfg.OnUp(ctx)
					}
					s.up.Store(true)
					s.cfg.Logger.Info("redis subscription up", "subscription", s.cfg.Name)
				}
			}
		case *redis.Message:
			s.handle(ctx, m)
		case *redis.Pong:
		}
	}
}

// handle runs OnMessage for one message. A panic there is a bug that a
// message triggered; it costs that message, never the subscription.
func (s *Subscription) handle(ctx context.Context, m *redis.Message) {
	defer func() {
		if p := recover(); p != nil {
			s.cfg.Logger.Error("panic handling a message", "subscription", s.cfg.Name,
				"channel", m.Channel, "panic", p, "stack", string(debug.Stack()))
		}
	}()
	s.cfg.OnMessage(ctx, m)
}
