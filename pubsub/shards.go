package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ShardsConfig describes a Shards.
type ShardsConfig struct {
	Name string // for logs
	// OnMessage handles one message. It runs on the goroutine of the
	// connection to the channel's master: one channel's messages are
	// handled one at a time, in the order Redis sent them, while different
	// masters' run concurrently.
	OnMessage func(ctx context.Context, msg *redis.Message)
	// OnUp runs each time a connection to a master has subscribed its
	// channels, after a start or a reconnect.
	OnUp           func(ctx context.Context)
	HealthInterval time.Duration
	Logger         *slog.Logger
}

// Shards keeps a changing set of shard channels subscribed on a Redis
// Cluster with SSUBSCRIBE: one connection to each master that owns the slot
// of any of them. When a connection fails, or the cluster moves a slot (a
// failover, a resharding), it asks the cluster where the slots are now and
// subscribes again there, with backoff; the other masters' connections go
// on meanwhile.
type Shards struct {
	cc  *redis.ClusterClient
	cfg ShardsConfig

	mu   sync.Mutex
	want map[string]struct{}
	kick chan struct{} // the wanted set changed

	// state is the connections and whether every wanted channel has one,
	// for Up; Run replaces it.
	state atomic.Pointer[shardsState]
}

type shardsState struct {
	complete bool
	conns    []*shardConn
}

// NewShards returns a Shards with no channel; nothing happens until Run.
func NewShards(cc *redis.ClusterClient, cfg ShardsConfig) *Shards {
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Shards{cc: cc, cfg: cfg, want: map[string]struct{}{}, kick: make(chan struct{}, 1)}
	s.state.Store(&shardsState{complete: true})
	return s
}

// Add subscribes channels (those already wanted are left as they are). It
// does not wait; Up tells when they are subscribed.
func (s *Shards) Add(channels ...string) {
	s.mu.Lock()
	n := len(s.want)
	for _, ch := range channels {
		s.want[ch] = struct{}{}
	}
	added := len(s.want) != n
	if added {
		s.state.Store(&shardsState{conns: s.state.Load().conns}) // not complete until assigned
	}
	s.mu.Unlock()
	if added {
		s.poke()
	}
}

// Remove unsubscribes channels.
func (s *Shards) Remove(channels ...string) {
	s.mu.Lock()
	for _, ch := range channels {
		delete(s.want, ch)
	}
	s.mu.Unlock()
	s.poke()
}

func (s *Shards) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Up reports whether every wanted channel is subscribed right now.
func (s *Shards) Up() bool {
	st := s.state.Load()
	if !st.complete {
		return false
	}
	for _, c := range st.conns {
		if !c.up.Load() {
			return false
		}
	}
	return true
}

// Run keeps the channels subscribed until ctx is done; it always returns
// ctx's error.
func (s *Shards) Run(ctx context.Context) error {
	conns := map[string]*shardConn{} // master address -> connection
	failed := make(chan *shardConn)
	defer func() {
		for _, c := range conns {
			c.stop()
		}
		s.state.Store(&shardsState{})
	}()
	// Failures back off exponentially; a quiet spell starts the backoff anew.
	backoff := minBackoff
	var lastFailure time.Time
	var retry <-chan time.Time
	later := func() {
		if time.Since(lastFailure) > 4*maxBackoff {
			backoff = minBackoff
		}
		lastFailure = time.Now()
		retry, backoff = time.After(backoff), nextBackoff(backoff)
	}
	failing := false // the last assignment failed: its retries log at debug
	for {
		if retry == nil {
			err := s.assign(ctx, conns, failed)
			switch {
			case err != nil && ctx.Err() == nil:
				level := slog.LevelWarn
				if failing {
					level = slog.LevelDebug
				}
				failing = true
				s.cfg.Logger.Log(ctx, level, "redis shard subscriptions failed", "subscription", s.cfg.Name, "err", err, "retry_in", backoff)
				s.cc.ReloadState(ctx)
				later()
			case err == nil:
				failing = false
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.kick:
		case <-retry:
			retry = nil
		case c := <-failed:
			if conns[c.addr] == c {
				delete(conns, c.addr)
			}
			c.stop()
			s.cc.ReloadState(ctx) // a failover may have moved its slots
			if retry == nil {
				later()
			}
		}
	}
}

func nextBackoff(b time.Duration) time.Duration { return min(2*b, maxBackoff) }

// assign gives every wanted channel to the connection of its slot's master,
// starting and stopping connections as needed.
func (s *Shards) assign(ctx context.Context, conns map[string]*shardConn, failed chan<- *shardConn) error {
	s.mu.Lock()
	want := slices.Collect(maps.Keys(s.want))
	s.mu.Unlock()
	byAddr := map[string][]string{}
	clients := map[string]*redis.Client{}
	var errs []error
	for _, ch := range want {
		m, err := s.cc.MasterForKey(ctx, ch)
		if err != nil {
			errs = append(errs, fmt.Errorf("find the master of %s: %w", ch, err))
			continue
		}
		addr := m.Options().Addr
		byAddr[addr] = append(byAddr[addr], ch)
		clients[addr] = m
	}
	for addr, chs := range byAddr {
		c := conns[addr]
		if c == nil {
			conns[addr] = s.startConn(ctx, addr, clients[addr], chs, failed)
			continue
		}
		c.set(ctx, chs)
	}
	for addr, c := range conns {
		if _, ok := byAddr[addr]; !ok {
			c.stop()
			delete(conns, addr)
		}
	}
	st := &shardsState{complete: len(errs) == 0, conns: slices.Collect(maps.Values(conns))}
	s.mu.Lock()
	if len(s.want) != len(want) { // changed meanwhile: Run assigns again
		st.complete = false
	}
	s.state.Store(st)
	s.mu.Unlock()
	return errors.Join(errs...)
}

// shardConn is one connection to a master and the channels it holds.
type shardConn struct {
	s      *Shards
	addr   string
	client *redis.Client
	up     atomic.Bool
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	channels map[string]struct{}
	ps       *redis.PubSub // nil until the session subscribes
	asked    int           // SSUBSCRIBEs sent on ps; up once as many are confirmed
}

// startConn starts a connection to the master at addr for chs.
func (s *Shards) startConn(ctx context.Context, addr string, client *redis.Client, chs []string, failed chan<- *shardConn) *shardConn {
	ctx, cancel := context.WithCancel(ctx)
	c := &shardConn{s: s, addr: addr, client: client, cancel: cancel, done: make(chan struct{}), channels: map[string]struct{}{}}
	for _, ch := range chs {
		c.channels[ch] = struct{}{}
	}
	go func() {
		defer close(c.done)
		err := c.session(ctx)
		c.up.Store(false)
		if ctx.Err() != nil {
			return
		}
		s.cfg.Logger.Warn("redis shard subscription failed", "subscription", s.cfg.Name, "master", addr, "err", err)
		select {
		case failed <- c:
		case <-ctx.Done():
		}
	}()
	return c
}

// stop ends the connection and waits for its goroutine.
func (c *shardConn) stop() {
	c.cancel()
	<-c.done
}

// set makes the connection hold exactly chs.
func (c *shardConn) set(ctx context.Context, chs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := make(map[string]struct{}, len(chs))
	for _, ch := range chs {
		keep[ch] = struct{}{}
		if _, ok := c.channels[ch]; !ok {
			c.channels[ch] = struct{}{}
			if c.ps != nil {
				// Not up until Redis confirms it; a failure shows in the
				// session, which then fails.
				c.asked++
				c.up.Store(false)
				_ = c.ps.SSubscribe(ctx, ch)
			}
		}
	}
	for ch := range c.channels {
		if _, ok := keep[ch]; !ok {
			delete(c.channels, ch)
			if c.ps != nil {
				_ = c.ps.SUnsubscribe(ctx, ch)
			}
		}
	}
}

// session subscribes the connection's channels and receives until it fails.
// Each channel is subscribed on its own (SSUBSCRIBE takes channels of one
// slot only).
func (c *shardConn) session(ctx context.Context) error {
	ps := c.client.SSubscribe(ctx)
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	c.mu.Lock()
	c.ps = ps
	c.asked = len(c.channels)
	var err error
	for ch := range c.channels {
		if err = ps.SSubscribe(ctx, ch); err != nil {
			break
		}
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ssubscribe on %s: %w", c.addr, err)
	}
	cfg := c.s.cfg
	confirmed := 0
	wasUp := false
	return receive(ctx, ps, cfg.HealthInterval, func(m *redis.Subscription) error {
		switch m.Kind {
		case "ssubscribe":
			confirmed++
			c.mu.Lock()
			all := confirmed == c.asked
			if all && wasUp {
				c.up.Store(true) // channels added since are confirmed
			}
			c.mu.Unlock()
			if all && !wasUp {
				// The connection is up (once per session): OnUp first.
				wasUp = true
				if cfg.OnUp != nil {
					cfg.OnUp(ctx)
				}
				c.mu.Lock()
				c.up.Store(confirmed == c.asked)
				c.mu.Unlock()
			}
		case "sunsubscribe":
			c.mu.Lock()
			_, wanted := c.channels[m.Channel]
			c.mu.Unlock()
			if wanted {
				// Not asked for: the cluster moved the channel's slot.
				return fmt.Errorf("unsubscribed from %s by the cluster (slot moved)", m.Channel)
			}
		}
		return nil
	}, func(m *redis.Message) { handle(ctx, cfg.Logger, cfg.Name, cfg.OnMessage, m) })
}
