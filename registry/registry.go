package registry

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// nonceTTL is how long a bk_connect nonce stays claimed; a backend must not
// reuse a nonce within it.
const nonceTTL = 60 * time.Second

// onDemandInterval spaces out the Redis look-ups that clients of a service
// with no live backend cause, so that a crowd retrying at once costs one.
const onDemandInterval = 100 * time.Millisecond

// Config describes a Registry.
type Config struct {
	Channels         protocol.Channels
	NodeID           string
	BackendTimeout   time.Duration
	BackendRetention time.Duration
	// MaxServices bounds the services set: a bk_connect of one more new
	// service is refused (DMB_MAX_SERVICES; default DefaultMaxServices).
	MaxServices int
	// BKIDLookupRate bounds the Redis look-ups per second of bkids not in
	// the view (DMB_BKID_LOOKUP_RATE; default DefaultBKIDLookupRate).
	BKIDLookupRate int
	Logger         *slog.Logger
	Metrics        *metrics.Metrics
}

// The defaults of the Config fields left zero.
const (
	DefaultMaxServices    = 10000
	DefaultBKIDLookupRate = 100
)

// Status of a service for a connecting client.
type Status int

// The answers of Lookup.
const (
	Unknown Status = iota // no backend ever registered the service: close 4004
	NoLive                // known, but no live backend now: close 4503
	Live                  // at least one live backend
)

// Registry answers registrations and keeps this node's view of backends.
type Registry struct {
	rdb redis.UniversalClient
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics
	sub *pubsub.Subscription

	onChange func(service string)
	watch    Watcher
	sharded  bool

	// acks are the answers waiting, on a cluster, for every node to
	// subscribe to a new backend's downlink; Run waits for them.
	acks sync.WaitGroup

	// rejectLog rate-limits the log lines of refused registrations.
	rejectLog *limiter

	// refresh is held by one refresh at a time (a semaphore, so that waiting
	// for it honours a context), so that a slow one cannot overwrite the
	// view with older data than a fast one wrote.
	refresh chan struct{}

	// mu guards the view below.
	mu       sync.Mutex
	services map[string]*service
	owner    map[string]string    // bkid -> service; never changes once known
	seen     map[string]time.Time // services this node has known within the retention, when last: 4503, never 4004, for them
	asked    map[string]time.Time // on-demand look-ups of services not in the view
	dead     map[string]time.Time // registered bkids not live, since when (this node's view)
	idle     map[string]time.Time // services without a live backend, since when (this node's view)
	left     map[string]time.Time // bkids that a bk_disconnect took out of the live view, when
	unknown  unknownBKIDs
}

type service struct {
	bkids   []string  // registered and not left
	live    []string  // the bkids with an uplink subscriber
	next    int       // round robin over live
	checked time.Time // last on-demand look-up
}

// New returns a registry; nothing happens until Run.
func New(rdb redis.UniversalClient, cfg Config) *Registry {
	if cfg.MaxServices <= 0 {
		cfg.MaxServices = DefaultMaxServices
	}
	if cfg.BKIDLookupRate <= 0 {
		cfg.BKIDLookupRate = DefaultBKIDLookupRate
	}
	r := &Registry{
		rdb:      rdb,
		cfg:      cfg,
		log:      cfg.Logger,
		m:        cfg.Metrics,
		sharded:  pubsub.Sharded(rdb),
		refresh:  make(chan struct{}, 1),
		services: make(map[string]*service),
		owner:    make(map[string]string),
		seen:     make(map[string]time.Time),
		asked:    make(map[string]time.Time),
		dead:     make(map[string]time.Time),
		idle:     make(map[string]time.Time),
		left:     make(map[string]time.Time),
		unknown:  unknownBKIDs{never: make(map[string]struct{})},

		rejectLog: newLimiter(10, 6*time.Second),
	}
	for _, reason := range RejectReasons {
		r.m.RegisterRejected.WithLabelValues(reason) // zero from the start, for rates and alerts
	}
	r.sub = pubsub.New(rdb, pubsub.Config{
		Name:      "register",
		Channels:  []string{cfg.Channels.Register()},
		OnMessage: r.handleRegister,
		OnUp: func(ctx context.Context) {
			r.m.RedisReconnects.WithLabelValues("register").Inc()
			// Whatever changed while the subscription was down, learn it now.
			if err := r.Refresh(ctx); err != nil {
				r.log.Warn("refresh backends after reconnect", "err", err)
			}
		},
		Logger: cfg.Logger,
	})
	return r
}

// Watcher is told of the bkids whose downlink channels the node must
// receive: on a cluster, where there are no pattern subscriptions, the
// downlink subscribes to each.
type Watcher interface {
	Watch(bkids ...string)
	Unwatch(bkids ...string)
}

// Watch sets the Watcher told of every bkid the registry learns and drops.
// Set it before Run.
func (r *Registry) Watch(w Watcher) { r.watch = w }

func (r *Registry) watched(bkids ...string) {
	if r.watch != nil && len(bkids) > 0 {
		r.watch.Watch(bkids...)
	}
}

// OnChange sets the function told, outside any lock, that the live backends
// of a service changed. Set it before Run; it must not block.
func (r *Registry) OnChange(fn func(service string)) { r.onChange = fn }

// Ready reports whether the register channel is subscribed.
func (r *Registry) Ready() bool { return r.sub.Up() }

// Run answers registrations and refreshes liveness until ctx is done.
func (r *Registry) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.sub.Run(ctx) })
	g.Go(func() error { return r.livenessLoop(ctx) })
	err := g.Wait()
	r.acks.Wait()
	return err
}

func (r *Registry) livenessLoop(ctx context.Context) error {
	t := time.NewTicker(r.cfg.BackendTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
				r.log.Debug("refresh backends", "err", err)
			}
		}
	}
}

// handleRegister answers one payload of the register channel.
func (r *Registry) handleRegister(ctx context.Context, msg *redis.Message) {
	// Counted when handled, answer included: tests read it to know that
	// every node is done with a payload. An answer that waits for the other
	// nodes (on a cluster) counts when it is sent.
	later := false
	defer func() {
		if !later {
			r.countRegister()
		}
	}()
	req, err := protocol.DecodeRegister([]byte(msg.Payload))
	if err != nil {
		r.m.Drops.WithLabelValues(metrics.DropMalformed).Inc()
		reason := rejectReason(err)
		switch {
		case req.Type == protocol.TypeConnect && protocol.ValidNonce(req.Nonce):
			// The node whose nack claims the nonce logs it: once, whatever
			// the number of nodes.
			r.nack(ctx, req.Nonce, err.Error(), func(reused bool) {
				if reused {
					reason = RejectNonceReused
				}
				r.rejected(ctx, reason, err.Error(), msg.Payload, req.Nonce)
			})
		case req.BKID != "":
			r.rejected(ctx, reason, err.Error(), msg.Payload, req.Nonce)
			r.ReportError(ctx, req.BKID, err.Error(), nil)
		default:
			r.rejected(ctx, reason, err.Error(), msg.Payload, req.Nonce)
		}
		return
	}
	switch req.Type {
	case protocol.TypeConnect:
		later = r.connect(ctx, req)
	case protocol.TypeDisconnect:
		r.disconnect(ctx, req.BKID)
	}
}

func (r *Registry) countRegister() { r.m.MessagesIn.WithLabelValues(metrics.KindRegister).Inc() }

// connect answers a bk_connect. It reports whether the answer is sent later,
// by a goroutine of its own.
func (r *Registry) connect(ctx context.Context, req protocol.RegisterRequest) (later bool) {
	ch := r.cfg.Channels
	res, err := registerScript.Run(ctx, r.rdb,
		[]string{ch.Key("nonce", req.Nonce), ch.Key("bkid"), ch.Key("services")},
		req.Service, req.BKID, int(nonceTTL/time.Second), ch.KeyPrefix(), r.cfg.MaxServices, r.cfg.NodeID,
	).Slice()
	if err != nil {
		r.m.RedisErrors.WithLabelValues("register").Inc()
		r.log.Warn("bk_connect failed", "service", req.Service, "nonce", req.Nonce, "err", err)
		return false
	}
	claimed, claim, ok := scriptResult(res)
	if !ok {
		r.log.Error("bk_connect: script returned no bkid", "result", res)
		return false
	}
	bkid, claimer := parseClaim(claim)
	if claimed == claimedNot && claimer == r.cfg.NodeID {
		// This node handles each payload once, so a claim of its own is
		// an earlier bk_connect with the same nonce: the backend reused it.
		r.rejected(ctx, RejectNonceReused, reusedNonceError, "", req.Nonce)
		r.publishNack(ctx, req.Nonce, reusedNonceError)
		return false
	}
	if claimed == claimedOverLimit {
		r.refuseOverLimit(ctx, req)
		return false
	}
	if !protocol.ValidBKID(bkid) {
		return false // the claim was this nonce's nack
	}
	// Every node learns the bkid, the ones that lost the claim too.
	r.mu.Lock()
	r.owner[bkid] = req.Service
	r.registeredAgainLocked(bkid)
	s := r.serviceLocked(req.Service)
	if !slices.Contains(s.bkids, bkid) {
		s.bkids = append(s.bkids, bkid)
	}
	r.mu.Unlock()
	r.watched(bkid)
	if claimed != claimedNonce {
		return false // the node that claimed the nonce answers
	}
	if !r.sharded {
		r.ack(ctx, req, bkid) // the pattern subscription covers the new downlink already
		return false
	}
	r.acks.Add(1)
	go func() {
		defer r.acks.Done()
		defer r.countRegister()
		r.awaitSubscribers(ctx, bkid)
		r.ack(ctx, req, bkid)
	}()
	return true
}

// What the register script did with a nonce.
const (
	claimedNot       = 0 // another node claimed it
	claimedNonce     = 1 // this node claimed it and assigned the bkid
	claimedOverLimit = 2 // this node claimed it, for a new service over MaxServices
)

// scriptResult reads the register script's {claimed, bkid}.
func scriptResult(res []any) (claimed int64, bkid string, ok bool) {
	if len(res) != 2 {
		return 0, "", false
	}
	n, ok1 := res[0].(int64)
	bkid, ok2 := res[1].(string)
	return n, bkid, ok1 && ok2
}

func (r *Registry) ack(ctx context.Context, req protocol.RegisterRequest, bkid string) {
	ch := r.cfg.Channels
	if err := pubsub.Publish(ctx, r.rdb, r.sharded, ch.RegisterReply(req.Nonce), protocol.ConnectAck(ch, req.Nonce, bkid, req.Service)).Err(); err != nil {
		r.m.RedisErrors.WithLabelValues("publish").Inc()
		r.log.Warn("bk_connect_ack not sent", "service", req.Service, "bkid", bkid, "err", err)
		return
	}
	r.m.Registrations.WithLabelValues(metrics.RegistrationAcked).Inc()
	r.log.Info("backend registered", "service", req.Service, "bkid", bkid, "requested", req.BKID)
}

// awaitSubscribers waits, on a cluster, until every node subscribes to the
// downlink of bkid, so that nothing the backend publishes after its ack is
// lost to a node that has not subscribed yet: there are no pattern
// subscriptions on a cluster. The nodes are the subscribers of the register
// channel; each subscribes to the downlink when it handles the bk_connect,
// or, if it started since, when it loads the registry after subscribing to
// the register channel. A node that is reconnecting may never come: the
// wait ends after DMB_BACKEND_TIMEOUT, and the ack goes out all the same.
func (r *Registry) awaitSubscribers(ctx context.Context, bkid string) {
	ch := r.cfg.Channels
	down := ch.Downlink(bkid)
	ctx, cancel := context.WithTimeout(ctx, r.cfg.BackendTimeout)
	defer cancel()
	pause := time.Millisecond
	for {
		nodes, err := pubsub.NumSub(ctx, r.rdb, ch.Register())
		if err == nil {
			var subs map[string]int64
			subs, err = pubsub.NumSub(ctx, r.rdb, down)
			if err == nil && subs[down] >= nodes[ch.Register()] {
				return
			}
		}
		select {
		case <-ctx.Done():
			r.log.Warn("bk_connect_ack sent before every node subscribed to the downlink", "bkid", bkid, "err", err)
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// refuseOverLimit nacks a bk_connect of a new service over MaxServices; the
// register script claimed its nonce for this node. It is counted, and
// logged only at debug level: a flood of them must not flood the log.
func (r *Registry) refuseOverLimit(ctx context.Context, req protocol.RegisterRequest) {
	r.m.Registrations.WithLabelValues(metrics.RegistrationLimited).Inc()
	r.log.Debug("bk_connect refused: too many services", "service", req.Service, "limit", r.cfg.MaxServices)
	payload := protocol.ConnectNack(req.Nonce, "too many services")
	if err := pubsub.Publish(ctx, r.rdb, r.sharded, r.cfg.Channels.RegisterReply(req.Nonce), payload).Err(); err != nil {
		r.m.RedisErrors.WithLabelValues("publish").Inc()
	}
}

// nack answers a bk_connect that cannot be accepted, from the one node that
// claims its nonce; that node calls logged, with reused true when the claim
// was its own from an earlier bk_connect with the same nonce (which it then
// answers again, saying so).
func (r *Registry) nack(ctx context.Context, nonce, reason string, logged func(reused bool)) {
	key := r.cfg.Channels.Key("nonce", nonce)
	won, err := r.rdb.SetNX(ctx, key, claimValue("-", r.cfg.NodeID), nonceTTL).Result()
	if err != nil {
		r.m.RedisErrors.WithLabelValues("register").Inc()
		return
	}
	if !won {
		v, err := r.rdb.Get(ctx, key).Result()
		if _, claimer := parseClaim(v); err != nil || claimer != r.cfg.NodeID {
			return // another node answers
		}
		logged(true)
		r.publishNack(ctx, nonce, reusedNonceError)
		return
	}
	logged(false)
	r.publishNack(ctx, nonce, reason)
}

func (r *Registry) publishNack(ctx context.Context, nonce, reason string) {
	if err := pubsub.Publish(ctx, r.rdb, r.sharded, r.cfg.Channels.RegisterReply(nonce), protocol.ConnectNack(nonce, reason)).Err(); err != nil {
		r.m.RedisErrors.WithLabelValues("publish").Inc()
	}
}

// ReportError tells a backend on its uplink that a payload of its was
// dropped.
func (r *Registry) ReportError(ctx context.Context, bkid, reason string, id []byte) {
	payload := protocol.AppendBackendError(nil, reason, id, r.cfg.NodeID)
	if err := pubsub.Publish(ctx, r.rdb, r.sharded, r.cfg.Channels.Uplink(bkid), payload).Err(); err != nil {
		r.m.RedisErrors.WithLabelValues("publish").Inc()
		return
	}
	r.m.MessagesOut.WithLabelValues(metrics.KindError).Inc()
}

// refreshTimeout bounds how long Lookup and Pick wait for Redis when the
// view has no live backend for a service.
const refreshTimeout = 3 * time.Second

// Lookup tells whether a client of service can be accepted. When the view
// has no live backend, it asks Redis before it answers (see ensureFresh).
func (r *Registry) Lookup(ctx context.Context, name string) (Status, error) {
	if err := r.ensureFresh(ctx, name); err != nil {
		return NoLive, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s, known := r.services[name]
	switch {
	case !known && r.isSeenLocked(name):
		// Redis lost its registry, or the service's last backend was
		// pruned: its backends may come back, so the client retries.
		return NoLive, nil
	case !known:
		return Unknown, nil
	case len(s.live) == 0:
		return NoLive, nil
	}
	return Live, nil
}

// ensureFresh reloads a service from Redis when the view has no live
// backend for it, at most once per onDemandInterval whatever the number of
// callers, so that a backend that came up since the last refresh is found
// at once and a crowd of clients costs one look-up.
func (r *Registry) ensureFresh(ctx context.Context, name string) error {
	if r.fresh(name) {
		return nil
	}
	// Bounded here, not by the caller: most look-ups need no Redis, and a
	// timer per connecting client is a cost the connect rate shows.
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	if err := r.acquireRefresh(ctx); err != nil {
		return err
	}
	defer r.releaseRefresh()
	if r.fresh(name) { // another caller looked while this one waited
		return nil
	}
	err := r.reloadService(ctx, name)
	// Marked checked only now that the look-up is done (failed or not):
	// callers that came meanwhile waited above and see its result, rather
	// than a view that was marked fresh before it was.
	r.mu.Lock()
	if s, ok := r.services[name]; ok {
		s.checked = time.Now()
	} else {
		r.noteAskedLocked(name)
	}
	r.mu.Unlock()
	return err
}

// fresh reports whether the view of a service needs no look-up now.
func (r *Registry) fresh(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.services[name]; ok {
		return len(s.live) > 0 || time.Since(s.checked) < onDemandInterval
	}
	return time.Since(r.asked[name]) < onDemandInterval
}

// noteAskedLocked records a look-up of a service not in the view; the
// record is bounded, since clients choose the names.
func (r *Registry) noteAskedLocked(name string) {
	if len(r.asked) >= 4096 {
		for n, t := range r.asked {
			if time.Since(t) >= onDemandInterval {
				delete(r.asked, n)
			}
		}
		if len(r.asked) >= 4096 {
			clear(r.asked)
		}
	}
	r.asked[name] = time.Now()
}

// acquireRefresh takes the refresh semaphore, which lets one look-up of
// Redis at a time refresh the view; a function that needs it says so. The
// suffix Locked means only that r.mu is held.
func (r *Registry) acquireRefresh(ctx context.Context) error {
	select {
	case r.refresh <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// releaseRefresh ends what acquireRefresh began.
func (r *Registry) releaseRefresh() { <-r.refresh }

// Pick returns the backend a client of service should be bound to: current
// while it is live, else the next live backend in turn. It returns "" when
// the service has no live backend, after asking Redis (see ensureFresh).
func (r *Registry) Pick(ctx context.Context, name, current string) string {
	if err := r.ensureFresh(ctx, name); err != nil {
		r.log.Debug("refresh before pick", "service", name, "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.services[name]
	if !ok || len(s.live) == 0 {
		return ""
	}
	if current != "" && slices.Contains(s.live, current) {
		return current
	}
	s.next = (s.next + 1) % len(s.live)
	return s.live[s.next]
}

// IsLive reports whether bkid is live in the view.
func (r *Registry) IsLive(name, bkid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.services[name]
	return ok && slices.Contains(s.live, bkid)
}

// MarkDead takes bkid out of the live view: a publish to its uplink reached
// nobody. The next refresh brings it back if it subscribes again.
func (r *Registry) MarkDead(name, bkid string) {
	r.mu.Lock()
	s, ok := r.services[name]
	changed := ok && removeLive(s, bkid)
	if ok {
		// The view was wrong: let the next Pick or Lookup ask Redis at once.
		s.checked = time.Time{}
	}
	r.mu.Unlock()
	if changed {
		r.log.Info("backend not live", "service", name, "bkid", bkid)
		r.changed(name)
	}
}

// Backends is one service's backends in the view.
type Backends struct {
	Registered []string `json:"registered"`
	Live       []string `json:"live"`
}

// BKIDs returns the backends registered for service, in this node's view.
func (r *Registry) BKIDs(service string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.services[service]; s != nil {
		return slices.Clone(s.bkids)
	}
	return nil
}

// Snapshot returns this node's view of every service's backends.
func (r *Registry) Snapshot() map[string]Backends {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Backends, len(r.services))
	for name, s := range r.services {
		out[name] = Backends{Registered: slices.Clone(s.bkids), Live: slices.Clone(s.live)}
	}
	return out
}

// Refresh reloads every service and the liveness of every backend from
// Redis, and tells the owner which services' live backends changed.
func (r *Registry) Refresh(ctx context.Context) error {
	if err := r.acquireRefresh(ctx); err != nil {
		return err
	}
	defer r.releaseRefresh()
	start := time.Now()
	names, err := r.rdb.SMembers(ctx, r.cfg.Channels.Key("services")).Result()
	if err != nil {
		r.m.RedisErrors.WithLabelValues("refresh").Inc()
		return fmt.Errorf("list services: %w", err)
	}
	fresh, err := r.load(ctx, names, start)
	if err != nil {
		return err
	}
	r.prune(ctx, fresh)
	r.mu.Lock()
	r.forgetLeavesLocked(start)
	for name, at := range r.seen {
		if start.Sub(at) >= r.cfg.BackendRetention {
			delete(r.seen, name)
		}
	}
	var changed []string
	for name, old := range r.services {
		if _, ok := fresh[name]; !ok && len(old.live) > 0 {
			changed = append(changed, name)
		}
	}
	for name, s := range fresh {
		if old, ok := r.services[name]; ok {
			s.next = old.next
			if !sameSet(old.live, s.live) {
				changed = append(changed, name)
			}
		} else if len(s.live) > 0 {
			changed = append(changed, name)
		}
	}
	r.services = fresh
	r.m.BackendsLive.Set(float64(r.liveCountLocked()))
	r.m.Services.Set(float64(len(fresh)))
	r.mu.Unlock()
	for _, name := range changed {
		r.changed(name)
	}
	return nil
}

// reloadService reloads one service from Redis; the caller holds the
// refresh semaphore (acquireRefresh), not r.mu.
func (r *Registry) reloadService(ctx context.Context, name string) error {
	known, err := r.rdb.SIsMember(ctx, r.cfg.Channels.Key("services"), name).Result()
	if err != nil {
		r.m.RedisErrors.WithLabelValues("refresh").Inc()
		return fmt.Errorf("look up service %s: %w", name, err)
	}
	if !known {
		return nil
	}
	fresh, err := r.load(ctx, []string{name}, time.Time{})
	if err != nil {
		return err
	}
	s := fresh[name]
	s.checked = time.Now()
	r.mu.Lock()
	old, ok := r.services[name]
	if ok {
		s.next = old.next
	}
	changed := !ok || !sameSet(old.live, s.live)
	r.services[name] = s
	r.m.BackendsLive.Set(float64(r.liveCountLocked()))
	r.mu.Unlock()
	if changed {
		r.changed(name)
	}
	return nil
}

// refreshChunk is the services a refresh reads from Redis at once. A
// registry of many services (a registration flood fills it) is read in
// round trips of this many: Redis serves other clients between them, and
// the node's other goroutines run while each is under way, so that the
// refresh never stalls the clients' traffic for the whole of its work.
const refreshChunk = 256

// load reads the bkids of the named services and which of them are live,
// refreshChunk services at a time. A bkid that left stays out of the live
// view, unless it left before healBefore, the start of the liveness check
// that loads: then it is live again if its uplink is still subscribed (see
// disconnect).
func (r *Registry) load(ctx context.Context, names []string, healBefore time.Time) (map[string]*service, error) {
	fresh := make(map[string]*service, len(names))
	for chunk := range slices.Chunk(names, refreshChunk) {
		if err := r.loadChunk(ctx, chunk, healBefore, fresh); err != nil {
			return nil, err
		}
	}
	return fresh, nil
}

// loadChunk is load of a few services, put in fresh.
func (r *Registry) loadChunk(ctx context.Context, names []string, healBefore time.Time, fresh map[string]*service) error {
	pipe := r.rdb.Pipeline()
	members := make([]*redis.StringSliceCmd, len(names))
	for i, name := range names {
		members[i] = pipe.SMembers(ctx, r.cfg.Channels.Key("service", name))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		r.m.RedisErrors.WithLabelValues("refresh").Inc()
		return fmt.Errorf("list backends: %w", err)
	}
	var channels []string
	for i, name := range names {
		bkids := members[i].Val()
		slices.SortFunc(bkids, compareBKID)
		fresh[name] = &service{bkids: bkids}
		for _, b := range bkids {
			channels = append(channels, r.cfg.Channels.Uplink(b))
		}
	}
	subs := map[string]int64{}
	if len(channels) > 0 {
		var err error
		subs, err = pubsub.NumSub(ctx, r.rdb, channels...)
		if err != nil {
			r.m.RedisErrors.WithLabelValues("refresh").Inc()
			return fmt.Errorf("count uplink subscribers: %w", err)
		}
	}
	var all []string
	for _, name := range names {
		all = append(all, fresh[name].bkids...)
	}
	r.watched(all...)
	back := map[string]string{}
	now := time.Now()
	r.mu.Lock()
	for _, name := range names {
		s := fresh[name]
		r.seen[name] = now
		delete(r.asked, name)
		for _, b := range s.bkids {
			r.owner[b] = name
			subscribed := subs[r.cfg.Channels.Uplink(b)] > 0
			stays, forgotten := r.leftLocked(b, healBefore)
			if stays {
				continue
			}
			if subscribed {
				s.live = append(s.live, b)
				if forgotten {
					back[b] = name
				}
			}
		}
	}
	r.mu.Unlock()
	r.backAfterLeave(back)
	return nil
}

// isSeenLocked reports whether this node has known the service within the
// retention; r.mu is held.
func (r *Registry) isSeenLocked(name string) bool {
	_, ok := r.seen[name]
	return ok
}

func (r *Registry) serviceLocked(name string) *service {
	s, ok := r.services[name]
	if !ok {
		s = &service{}
		r.services[name] = s
	}
	return s
}

func (r *Registry) liveCountLocked() int {
	n := 0
	for _, s := range r.services {
		n += len(s.live)
	}
	return n
}

func (r *Registry) changed(name string) {
	if r.onChange != nil {
		r.onChange(name)
	}
}

func removeLive(s *service, bkid string) bool {
	n := len(s.live)
	s.live = slices.DeleteFunc(s.live, func(b string) bool { return b == bkid })
	return len(s.live) != n
}

// sameSet compares two sorted lists.
func sameSet(a, b []string) bool { return slices.Equal(a, b) }

// compareBKID orders bkids numerically, so that round robin is stable.
func compareBKID(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "...(" + strconv.Itoa(len(s)) + " bytes)"
	}
	return s
}
