package broker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/registry"
	"github.com/dmb-broker/dmb/uplink"
)

// Registry is what the broker asks before it accepts a client.
type Registry interface {
	Lookup(ctx context.Context, service string) (registry.Status, error)
}

// Uplink carries client events to backends.
type Uplink interface {
	Connect(c uplink.Client) error
	// Message is done with data and id when it returns.
	Message(ctx context.Context, c uplink.Client, data, id json.RawMessage) error
	Disconnect(c uplink.Client, code int, reason string) error
	// After runs fn once every frame of c queued before has been answered.
	After(c uplink.Client, fn func()) error
}

// Config describes a Broker.
type Config struct {
	SendQueue        int
	MaxMessageBytes  int64
	ClientErrorLimit int
	WriteTimeout     time.Duration
	AllowedOrigins   []string
	TrustedProxies   []netip.Prefix
	// Auth, when set, requires a token of every client (PROTOCOL.md,
	// section 7).
	Auth    *auth.Verifier
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Broker serves WebSocket clients and fans out to them.
type Broker struct {
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics
	reg Registry
	up  Uplink

	// messagesIn counts client frames, looked up once: WithLabelValues
	// hashes the labels and takes a lock on each call.
	messagesIn prometheus.Counter

	// ctx bounds what sessions wait for (a full uplink queue, an unbuffered
	// write); cancelled by Shutdown when time runs out, which also closes
	// the connections that are left.
	ctx    context.Context
	cancel context.CancelFunc

	sessions sync.WaitGroup

	// fanoutEnd is when the last fan-out ended (UnixNano); see fanout.
	fanoutEnd atomic.Int64

	watchdog sync.WaitGroup // watchWrites, once started
	flushers sync.WaitGroup // flush, once started
	// flushersOn is set while the flushers take clients from ready.
	flushersOn atomic.Bool
	// ready holds the clients whose writer a flusher is to run; closed by
	// Shutdown once every session ended.
	ready chan *client

	mu        sync.RWMutex // guards the fields below
	closing   bool
	looping   bool // watchWrites and the flushers were started
	byCID     map[string]*client
	byService map[string]map[*client]struct{}
	byUser    map[userKey]map[*client]struct{} // when auth is on
}

// userKey is a user within a service: a backend reaches only the clients
// of its own service.
type userKey struct{ service, user string }

// New returns a broker.
func New(reg Registry, up Uplink, cfg Config) *Broker {
	ctx, cancel := context.WithCancel(context.Background())
	return &Broker{
		cfg:        cfg,
		log:        cfg.Logger,
		m:          cfg.Metrics,
		reg:        reg,
		up:         up,
		messagesIn: cfg.Metrics.MessagesIn.WithLabelValues(metrics.KindMessage),
		ctx:        ctx,
		cancel:     cancel,
		byCID:      make(map[string]*client),
		byService:  make(map[string]map[*client]struct{}),
		byUser:     make(map[userKey]map[*client]struct{}),
		ready:      make(chan *client, readyClients),
	}
}

// ServeHTTP is the WebSocket endpoint; mount it at /ws/{service}.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	service := r.PathValue("service")
	wire := corkConnFrom(r.Context())
	if wire != nil {
		// The 101 response waits in the batch for the first frame, so that
		// a client's upgrade and its dmb:connected leave in one write. Every
		// way out below uncorks: a refusal before its close handshake, an
		// accepted client through its writer.
		wire.cork()
	}
	uncork := func() {
		if wire != nil {
			_ = wire.uncork()
		}
	}
	conn, err := websocket.Accept(withLeanBuffers(w, wire), r, &websocket.AcceptOptions{
		// The origin policy is ours (originAllowed), so that a refused
		// browser learns why from close code 1008 rather than a bare 403.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		uncork()
		b.log.Debug("websocket upgrade failed", "err", err, "remote", r.RemoteAddr)
		return
	}
	remote := remoteAddr(r, b.cfg.TrustedProxies)
	refuse := func(code int, reason string) {
		uncork()
		b.m.Disconnected(code)
		b.log.Info("client refused", "service", service, "remote", remote, "code", code, "reason", reason)
		_ = conn.Close(websocket.StatusCode(code), reason)
	}
	if !originAllowed(r, b.cfg.AllowedOrigins) {
		refuse(protocol.ClosePolicy, "origin not allowed")
		return
	}
	if !protocol.ValidService(service) {
		refuse(protocol.CloseUnknownSvc, "unknown service")
		return
	}
	var user string
	if b.cfg.Auth != nil {
		// Before any look-up: who may not connect learns nothing of the
		// services.
		if user, err = b.cfg.Auth.Verify(r.URL.Query().Get("token"), service); err != nil {
			refuse(protocol.CloseUnauthorized, authReason(err))
			return
		}
	}
	status, err := b.reg.Lookup(b.ctx, service) // bounded by the registry
	switch {
	case err != nil:
		b.log.Warn("registry look-up failed", "service", service, "err", err)
		refuse(protocol.CloseNoLiveBackend, "no live backend")
		return
	case status == registry.Unknown:
		refuse(protocol.CloseUnknownSvc, "unknown service")
		return
	case status == registry.NoLive:
		refuse(protocol.CloseNoLiveBackend, "no live backend")
		return
	}
	c := newClient(b, conn, wire, service, remote, user)
	if !b.add(c) {
		refuse(protocol.CloseGoingAway, "server shutting down")
		return
	}
	// The session runs on a goroutine of its own, and the handler returns:
	// the request, the HTTP server's state for the connection and the deep
	// stack that serving the upgrade grew are then garbage instead of being
	// kept as long as the client stays. Shutdown waits for the session.
	go func() {
		defer b.sessions.Done()
		c.run()
	}()
}

// add indexes a new client and queues its first frame, dmb:connected;
// false when the broker is shutting down. The frame is queued under b.mu,
// which fan-out holds for reading, so no other frame can come before it,
// and a client that reads dmb:connected is already reachable.
func (b *Broker) add(c *client) bool {
	connected := protocol.AppendConnected(nil, c.cid, c.service)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return false
	}
	b.startLoops()
	c.q.push(connected)
	b.sessions.Add(1)
	b.byCID[c.cid] = c
	set := b.byService[c.service]
	if set == nil {
		set = make(map[*client]struct{})
		b.byService[c.service] = set
	}
	set[c] = struct{}{}
	if c.user != "" {
		k := userKey{c.service, c.user}
		if b.byUser[k] == nil {
			b.byUser[k] = make(map[*client]struct{})
		}
		b.byUser[k][c] = struct{}{}
	}
	b.m.Connections.WithLabelValues(c.service).Inc()
	b.m.Connects.WithLabelValues(c.service).Inc()
	b.m.MessagesOut.WithLabelValues(metrics.KindConnected).Inc()
	return true
}

func (b *Broker) remove(c *client) {
	b.mu.Lock()
	delete(b.byCID, c.cid)
	if set := b.byService[c.service]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(b.byService, c.service)
		}
	}
	if c.user != "" {
		k := userKey{c.service, c.user}
		delete(b.byUser[k], c)
		if len(b.byUser[k]) == 0 {
			delete(b.byUser, k)
		}
	}
	b.mu.Unlock()
	b.m.Connections.WithLabelValues(c.service).Dec()
}

// Broadcast queues frame to every client of service on this node.
func (b *Broker) Broadcast(service string, frame []byte) int {
	n := b.fanout(func() map[*client]struct{} { return b.byService[service] }, frame)
	b.m.MessagesOut.WithLabelValues(metrics.KindBroadcast).Add(float64(n))
	b.m.Deliveries.Add(float64(n))
	return n
}

// fanoutIdle is how long the fan-out must have been idle for the next one
// to write to sockets itself.
const fanoutIdle = time.Millisecond

// fanout delivers the same frame to every client of the set that clients
// returns (called with b.mu held for reading). It never waits on a client.
//
// When the fan-out has been idle, it writes the frame to each client whose
// queue is empty and that has no writer, framed once for all of them (see
// client.sendFramed): one system call per client, no goroutine woken. A
// large set is then copied, b.mu released (so that clients connect and
// leave meanwhile), and split over GOMAXPROCS goroutines, since one alone
// would spend a core on the system calls; fanout returns once every client
// has its frame written or queued, so the next broadcast cannot overtake.
// A client that left meanwhile takes nothing: its queue is stopped and its
// socket closed to such writes (corkConn.Close).
//
// When a fan-out follows the last one at once, the broadcasts are coming
// faster than the fan-out writes them: it only queues, which is quick, and
// the clients' writers send what piles up in one write each, so the cost
// per frame falls as the load grows.
func (b *Broker) fanout(clients func() map[*client]struct{}, frame []byte) int {
	b.mu.RLock()
	locked := true
	defer func() {
		if locked {
			b.mu.RUnlock()
		}
	}()
	set := clients()
	if len(set) == 0 {
		return 0
	}
	defer func() { b.fanoutEnd.Store(time.Now().UnixNano()) }()
	if time.Since(time.Unix(0, b.fanoutEnd.Load())) < fanoutIdle {
		n := 0
		for c := range set {
			if c.send(frame) {
				n++
			}
		}
		return n
	}
	framed := wsframe.AppendText(make([]byte, 0, wsframe.TextSize(frame)), frame)
	cs := fanoutLists.Get().(*[]*client)
	list := (*cs)[:0]
	for c := range set {
		list = append(list, c)
	}
	defer func() {
		clear(list)
		*cs = list[:0]
		fanoutLists.Put(cs)
	}()
	parts := runtime.GOMAXPROCS(0)
	if parts < 2 || len(list) < 2*fanoutPart {
		return sendList(list, frame, framed)
	}
	b.mu.RUnlock()
	locked = false
	var (
		wg sync.WaitGroup
		n  atomic.Int64
	)
	size := (len(list) + parts - 1) / parts
	for part := range slices.Chunk(list, size) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.Add(int64(sendList(part, frame, framed)))
		}()
	}
	wg.Wait()
	return int(n.Load())
}

// fanoutPart is the fewest clients worth a goroutine of their own.
const fanoutPart = 256

// fanoutLists lends fanout the lists it copies a set into.
var fanoutLists = sync.Pool{New: func() any { return new([]*client) }}

// sendList delivers frame to each client of list.
//
// At a few broadcasts a second little of the clients' memory is still in
// the cache, and a write to a client waits for each load it needs, one
// after the other. So each run of clients is first read through, loads
// that the processor overlaps, and then written to. This cut the CPU of a
// fan-out to 10,000 clients at 5 broadcasts/s by about 4%.
func sendList(list []*client, frame, framed []byte) int {
	n := 0
	for run := range slices.Chunk(list, warmRun) {
		warm(run)
		for _, c := range run {
			if c.sendFramed(frame, framed) {
				n++
			}
		}
	}
	return n
}

// warmRun is how many clients sendList reads through at a time: enough
// loads to overlap, few enough that they stay in the cache until written.
const warmRun = 16

// warm loads, for each client of run, the memory a direct write reaches
// first: the client, and its connection's descriptor. Both are set before
// the client joins the broker's sets and never change, so they are read
// without a lock.
func warm(run []*client) {
	sum := 0
	for _, c := range run {
		if c.direct {
			sum += c.wire.fd
		}
	}
	runtime.KeepAlive(sum) // the loads are the point: keep them
}

// Direct queues frame to the client cid if it is a client of service.
func (b *Broker) Direct(service, cid string, frame []byte) int {
	c := b.lookup(service, cid)
	if c == nil || !c.send(frame) {
		b.m.Drops.WithLabelValues(metrics.DropUnknownClient).Inc()
		return 0
	}
	b.m.Deliveries.Inc()
	b.m.MessagesOut.WithLabelValues(metrics.KindDirect).Inc()
	return 1
}

// DirectUser queues frame to every connection of user among the clients of
// service on this node.
func (b *Broker) DirectUser(service, user string, frame []byte) int {
	n := b.fanout(func() map[*client]struct{} { return b.byUser[userKey{service, user}] }, frame)
	b.m.MessagesOut.WithLabelValues(metrics.KindDirect).Add(float64(n))
	b.m.Deliveries.Add(float64(n))
	return n
}

// authReason is the close reason for a refused token.
func authReason(err error) string {
	for _, e := range []error{auth.ErrMissing, auth.ErrExpired, auth.ErrNoSubject, auth.ErrWrongScope} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return auth.ErrInvalid.Error()
}

// Kick closes the client cid with 4009 if it is a client of service, after
// the frames queued before the kick.
func (b *Broker) Kick(service, cid, reason string) int {
	c := b.lookup(service, cid)
	if c == nil || !c.q.close(closeReq{code: protocol.CloseKicked, reason: reason, flush: true}) {
		return 0
	}
	b.log.Info("client kicked", "cid", cid, "service", service, "reason", reason)
	return 1
}

// dropAll closes every connection left, without a close handshake: their
// sessions end at once.
func (b *Broker) dropAll() {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, c := range b.byCID {
		_ = c.conn.CloseNow()
	}
}

// lookup finds a client by cid within a service: a backend reaches only the
// clients of its own service.
func (b *Broker) lookup(service, cid string) *client {
	b.mu.RLock()
	c := b.byCID[cid]
	b.mu.RUnlock()
	if c == nil || c.service != service {
		return nil
	}
	return c
}

// Clients returns the number of clients connected to this node.
func (b *Broker) Clients() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.byCID)
}

// Shutdown stops accepting clients; stops passing on what clients send;
// once the uplink has published and answered every frame already read,
// closes each client with 1001 after what is queued for it; and waits until
// every session has ended and told its backend, or until ctx ends, when the
// rest are dropped.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	b.closing = true
	clients := make([]*client, 0, len(b.byCID))
	for _, c := range b.byCID {
		clients = append(clients, c)
	}
	b.mu.Unlock()
	for _, c := range clients {
		c.stopForwarding()
		closeAfter := func() {
			c.q.close(closeReq{code: protocol.CloseGoingAway, reason: "server shutting down", flush: true})
		}
		if err := b.up.After(c, closeAfter); err != nil {
			closeAfter()
		}
	}
	done := make(chan struct{})
	go func() {
		b.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		b.stopLoops()
		return nil
	case <-ctx.Done():
		b.cancel()
		b.dropAll()
		<-done
		b.stopLoops()
		return errors.Join(errors.New("clients dropped at shutdown timeout"), ctx.Err())
	}
}
