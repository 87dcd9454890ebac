package uplink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/dmb-broker/dmb/internal/ratelimit"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// Client is what the uplink needs of a client session.
type Client interface {
	CID() string
	Service() string
	Remote() string
	User() string
	// Send queues a frame to the client; it never blocks.
	Send(frame []byte)
}

// Registry is what the uplink needs of the backend registry.
type Registry interface {
	// Pick returns the live backend for a client of service: current while
	// it is live, else another, or "" when none is.
	Pick(ctx context.Context, service, current string) string
	IsLive(service, bkid string) bool
	MarkDead(service, bkid string)
}

// ErrStopped is returned by the enqueue methods once the uplink has stopped.
var ErrStopped = errors.New("uplink stopped")

// Config describes an Uplink.
type Config struct {
	Channels protocol.Channels
	Workers  int
	Logger   *slog.Logger
	Metrics  *metrics.Metrics
	// BackendRate bounds the client messages a second this node publishes
	// to one backend, with bursts of a second's worth; 0 is no bound.
	// Each worker keeps its share of it.
	BackendRate float64
	// Clients, when set, is the node's client table in Redis: a hash of
	// each announced client's cid to the bkid it was announced to, written
	// in the same pipeline as client_connected and client_disconnected,
	// so that the survivors of a node that dies can tell each backend of
	// its clients (package nodes). It returns the table's key, which
	// changes when the node takes a new identity.
	Clients func() string
	// Ended, when set, names the mark that a resumable session ended
	// (package resume), written with client_disconnected for
	// ResumeWindow.
	Ended        func(cid string) string
	ResumeWindow time.Duration
}

// queueSize is each worker's queue. A full queue makes the readers of the
// clients that feed it wait, which slows those clients, not the others'
// downlink.
const queueSize = 4096

// maxBatch bounds one pipeline, so a burst cannot delay acks of the frames
// at its head for long.
const maxBatch = 512

// maxAttempts bounds how many backends one frame is offered to when the
// backends it is sent to turn out to be gone.
const maxAttempts = 3

// Uplink publishes client events to backends.
type Uplink struct {
	rdb     redis.UniversalClient
	sharded bool // SPUBLISH on a cluster
	cfg     Config
	log     *slog.Logger
	m       *metrics.Metrics
	reg     Registry
	workers []*worker // client events, by cid
	events  *worker   // node events (bk_message_ack, error): never behind client traffic
	seed    maphash.Seed

	// Counters of every frame, looked up once: WithLabelValues hashes the
	// labels and takes a lock on each call.
	outMessage, outAck prometheus.Counter

	drain   chan struct{} // closed by Drain
	stopped chan struct{} // closed when Run returns
	once    sync.Once

	// unsettled counts, by cid, the connects that are queued and not yet
	// written to Redis (Settle).
	unsettledMu sync.Mutex
	unsettled   map[string]int
}

// New returns an uplink; nothing is published until Run.
func New(rdb redis.UniversalClient, reg Registry, cfg Config) *Uplink {
	u := &Uplink{
		rdb:       rdb,
		sharded:   pubsub.Sharded(rdb),
		cfg:       cfg,
		log:       cfg.Logger,
		m:         cfg.Metrics,
		reg:       reg,
		seed:      maphash.MakeSeed(),
		drain:     make(chan struct{}),
		stopped:   make(chan struct{}),
		unsettled: make(map[string]int),
	}
	u.outMessage = u.m.MessagesOut.WithLabelValues(metrics.KindMessage)
	u.outAck = u.m.MessagesOut.WithLabelValues(metrics.KindAck)
	for range cfg.Workers {
		u.workers = append(u.workers, u.newWorker())
	}
	u.events = u.newWorker()
	return u
}

func (u *Uplink) newWorker() *worker {
	return &worker{
		u:         u,
		in:        make(chan request, queueSize),
		rebind:    make(chan struct{}, 1),
		bindings:  make(map[string]*binding),
		byService: make(map[string]map[string]*binding),
		pending:   make(map[string]struct{}),
		channels:  make(map[string]string),
		held:      make(map[string]struct{}),
		rates:     make(map[string]*ratelimit.Bucket),
	}
}

// Run publishes until ctx is done, or until Drain is called and everything
// queued before it is published.
func (u *Uplink) Run(ctx context.Context) error {
	defer close(u.stopped)
	g, ctx := errgroup.WithContext(ctx)
	for _, w := range append([]*worker{u.events}, u.workers...) {
		g.Go(func() error { return w.run(ctx) })
	}
	return g.Wait()
}

// Drain asks Run to publish what is queued and return. Enqueue nothing after
// it.
func (u *Uplink) Drain() { u.once.Do(func() { close(u.drain) }) }

// Connect binds a new client to a live backend of its service and publishes
// client_connected there.
func (u *Uplink) Connect(c Client) error {
	return u.enqueueUnsettled(request{kind: reqConnect, client: c})
}

// Resume binds a client that resumed its session to bkid, or to another
// live backend when bkid is not live, and publishes client_connected
// there with resumed and the session's rooms.
func (u *Uplink) Resume(c Client, bkid string, rooms []string) error {
	return u.enqueueUnsettled(request{kind: reqConnect, client: c, bkid: bkid, resumed: true, rooms: rooms})
}

// Message publishes a client's frame to its backend and answers the client
// when id is not nil. It waits while the worker's queue is full, until ctx
// (the client's lifetime) ends. It builds the backend's message at once, so
// the caller may reuse data and id when it returns.
//
// heavy says the client has lately been sending faster than its rate:
// such messages may not take the last quarter of the backend's rate,
// which is kept for the clients that send little, so that a flood of
// many clients each at its own bound costs the honest ones nothing.
func (u *Uplink) Message(ctx context.Context, c Client, data, id json.RawMessage, heavy bool) error {
	cid, user := c.CID(), c.User()
	msg := protocol.AppendMessage(make([]byte, 0, protocol.MessageSize(cid, user, data, id)), cid, user, data, id)
	if id != nil { // the id ends the message: {...,"id":<id>}
		end := len(msg) - 1
		id = msg[end-len(id) : end : end]
	}
	return u.enqueue(ctx, u.clientWorker(c), request{kind: reqMessage, client: c, data: msg, id: id, heavy: heavy})
}

// Disconnect tells the client's backend that the client went away;
// resumable says its session may be resumed, which is then marked so.
func (u *Uplink) Disconnect(c Client, code int, reason string, resumable bool) error {
	return u.enqueue(context.Background(), u.clientWorker(c), request{kind: reqDisconnect, client: c, code: code, reason: reason, resumed: resumable})
}

// Drop forgets a client without telling its backend: its session goes on
// on another connection, which announced itself.
func (u *Uplink) Drop(c Client) error {
	return u.enqueue(context.Background(), u.clientWorker(c), request{kind: reqDrop, client: c})
}

// Event publishes a client's event (room_joined, room_left) to its
// backend, in order with its messages; nothing answers it. It waits while
// the worker's queue is full, until ctx ends.
func (u *Uplink) Event(ctx context.Context, c Client, payload []byte) error {
	return u.enqueue(ctx, u.clientWorker(c), request{kind: reqEvent, client: c, data: payload})
}

// Retrack writes every announced client to the client table again: Redis
// lost it (a restart without persistence).
func (u *Uplink) Retrack(ctx context.Context) error { return u.everyWorker(ctx, reqRetrack) }

// Forget makes the uplink forget that any client was announced: the
// survivors declared this node lost and told the backends that its
// clients left, so none is told again when it goes.
func (u *Uplink) Forget(ctx context.Context) error { return u.everyWorker(ctx, reqForget) }

func (u *Uplink) everyWorker(ctx context.Context, kind reqKind) error {
	for _, w := range u.workers {
		if err := u.enqueue(ctx, w, request{kind: kind}); err != nil {
			return err
		}
	}
	return nil
}

// clients is the client table's key, "" when the node keeps none.
func (u *Uplink) clients() string {
	if u.cfg.Clients == nil {
		return ""
	}
	return u.cfg.Clients()
}

// ErrQueueFull is returned by Publish when node events come faster than
// Redis takes them; the event is dropped and counted.
var ErrQueueFull = errors.New("uplink event queue full")

// Publish publishes a node event to a backend's uplink, fire and forget,
// in the order of the calls. It never blocks: the downlink calls it, and
// fan-out must not wait for client traffic or for Redis.
func (u *Uplink) Publish(bkid string, payload []byte) error {
	select {
	case u.events.in <- request{kind: reqPublish, bkid: bkid, data: payload}:
		return nil
	case <-u.stopped:
		return ErrStopped
	default:
		u.m.Drops.WithLabelValues(metrics.DropQueueFull).Inc()
		return ErrQueueFull
	}
}

// After runs fn once every frame of c queued before it has been published
// and answered. The broker uses it to close a client only after the acks of
// what it sent. It waits while the worker's queue is full, until ctx ends.
func (u *Uplink) After(ctx context.Context, c Client, fn func()) error {
	return u.enqueue(ctx, u.clientWorker(c), request{kind: reqBarrier, client: c, then: fn})
}

// Settle returns once the connects queued for the client cid before it
// have been written to Redis: the session's line in the client table. A
// resume of a session that began on this node a moment ago waits for it,
// so that Redis knows the session when the resume claims it; any other
// returns at once. A disconnect needs no wait: it writes the session's
// mark before it takes the line out, in one pipeline, so Redis holds one
// or the other all along.
func (u *Uplink) Settle(ctx context.Context, cid string) error {
	u.unsettledMu.Lock()
	n := u.unsettled[cid]
	u.unsettledMu.Unlock()
	if n == 0 {
		return nil
	}
	done := make(chan struct{})
	if err := u.enqueue(ctx, u.cidWorker(cid), request{kind: reqBarrier, cid: cid, then: func() { close(done) }}); err != nil {
		return fmt.Errorf("settle client %s: %w", cid, err)
	}
	select {
	case <-done:
		return nil
	case <-u.stopped:
		return fmt.Errorf("settle client %s: %w", cid, ErrStopped)
	case <-ctx.Done():
		return fmt.Errorf("settle client %s: %w", cid, ctx.Err())
	}
}

// enqueueUnsettled queues a connect, counted until it is written
// (Settle).
func (u *Uplink) enqueueUnsettled(r request) error {
	cid := r.client.CID()
	u.unsettledMu.Lock()
	u.unsettled[cid]++
	u.unsettledMu.Unlock()
	err := u.enqueue(context.Background(), u.cidWorker(cid), r)
	if err != nil {
		u.settled(cid)
	}
	return err
}

// settled counts one of cid's connects written.
func (u *Uplink) settled(cid string) {
	u.unsettledMu.Lock()
	if u.unsettled[cid]--; u.unsettled[cid] <= 0 {
		delete(u.unsettled, cid)
	}
	u.unsettledMu.Unlock()
}

// BackendsChanged moves the clients of service whose backend is no longer
// live to one that is. It never blocks: the registry calls it.
func (u *Uplink) BackendsChanged(service string) {
	for _, w := range u.workers {
		w.mu.Lock()
		w.pending[service] = struct{}{}
		w.mu.Unlock()
		select {
		case w.rebind <- struct{}{}:
		default:
		}
	}
}

func (u *Uplink) clientWorker(c Client) *worker { return u.cidWorker(c.CID()) }

func (u *Uplink) cidWorker(cid string) *worker {
	return u.workers[maphash.String(u.seed, cid)%uint64(len(u.workers))]
}

func (u *Uplink) enqueue(ctx context.Context, w *worker, r request) error {
	select { // the common case, without the cost of a three-way select
	case w.in <- r:
		return nil
	default:
	}
	select {
	case w.in <- r:
		return nil
	case <-u.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

type reqKind uint8

const (
	reqConnect reqKind = iota
	reqMessage
	reqDisconnect
	reqPublish
	reqBarrier
	reqEvent   // a client's event for its backend, without an answer
	reqRetrack // write every announced client to the client table again
	reqForget  // forget that any client was announced
	reqDrop    // forget one client, telling nobody
)

type request struct {
	kind   reqKind
	client Client
	data   json.RawMessage // the backend's message event, or the payload of a publish
	id     json.RawMessage // the message's id, within data
	code   int
	reason string
	bkid   string // publish
	then   func() // barrier
	cid    string // a barrier of no client: the cid whose requests it follows (Settle)
	heavy  bool   // message: from a client over half its burst
	// resumed: a connect of a resumed session (bkid: its backend), or a
	// disconnect of a session that may be resumed.
	resumed bool
	rooms   []string // a resumed connect: the session's rooms
}

// binding is where one client's frames go. Only its worker touches it.
type binding struct {
	client    Client
	bkid      string
	announced bool     // bkid has had client_connected for this client
	tracked   bool     // the client table may name the client
	resumed   bool     // the next client_connected says resumed, with rooms
	rooms     []string // the resumed session's rooms
}

type worker struct {
	u         *Uplink
	in        chan request
	bindings  map[string]*binding            // by cid
	byService map[string]map[string]*binding // service -> cid -> binding

	rebind  chan struct{}
	mu      sync.Mutex // guards pending
	pending map[string]struct{}

	channels map[string]string   // bkid -> its uplink channel, built once
	held     map[string]struct{} // pick's: the cids with a request left for later
	p        pipeline            // reused by process, so its ops do not grow anew per batch
	// rates holds, by bkid, the worker's share of the backend's rate.
	rates map[string]*ratelimit.Bucket
}

// channel is the uplink channel of bkid.
func (w *worker) channel(bkid string) string {
	ch, ok := w.channels[bkid]
	if !ok {
		// Bounded by the bkids this node ever published to; a few per
		// backend restart.
		ch = w.u.cfg.Channels.Uplink(bkid)
		w.channels[bkid] = ch
	}
	return ch
}

func (w *worker) run(ctx context.Context) error {
	batch := make([]request, 0, maxBatch)
	var queued []request // taken from in and not yet published, in order
	for {
		if len(queued) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-w.rebind:
				w.rebindPending(ctx)
				continue
			case r := <-w.in:
				queued = append(queued, r)
			case <-w.u.drain:
				for {
					if queued = w.fill(queued); len(queued) == 0 {
						return nil
					}
					batch, queued = w.publishNext(ctx, batch, queued)
				}
			}
		} else {
			select { // between pipelines, without waiting
			case <-ctx.Done():
				return ctx.Err()
			case <-w.rebind:
				w.rebindPending(ctx)
			default:
			}
		}
		queued = w.fill(queued)
		batch, queued = w.publishNext(ctx, batch, queued)
	}
}

// publishNext publishes the next pipeline of queued (see pick); it returns
// batch, emptied for the next, and what is left of queued.
func (w *worker) publishNext(ctx context.Context, batch, queued []request) ([]request, []request) {
	batch, queued = w.pick(batch[:0], queued)
	w.process(ctx, batch)
	clear(batch) // drop references to clients and payloads
	return batch[:0], queued
}

// maxQueued bounds what a worker takes from its queue ahead of the
// pipeline it builds, so that a message can pass the connects and
// disconnects queued before it.
const maxQueued = 4 * maxBatch

// fill adds what is queued, up to maxQueued, without waiting.
func (w *worker) fill(queued []request) []request {
	for len(queued) < maxQueued {
		select {
		case r := <-w.in:
			queued = append(queued, r)
		default:
			return queued
		}
	}
	return queued
}

// lifecycleTurn bounds the connects and disconnects in one pipeline. Each
// is a few commands, and a thousand clients that connect or leave at once
// put a thousand of them in the queue: the messages of the clients already
// connected pass them. A message among the maxQueued requests a worker
// holds waits for at most two pipelines of lifecycleTurn; one further back
// in the queue, for as many more as it takes the worker to reach it.
const lifecycleTurn = 64

// lifecycle tells whether r begins or ends a client's binding.
func (r *request) lifecycle() bool {
	return r.kind == reqConnect || r.kind == reqDisconnect || r.kind == reqDrop
}

// key is the cid whose order r keeps, "" for a request of every client (a
// retrack, a forget, a node event).
func (r *request) key() string {
	if r.client != nil {
		return r.client.CID()
	}
	return r.cid
}

// pick moves from queued, in order, the requests of the next pipeline to
// batch, and returns what is left of queued, in order. A request passes
// the requests of other clients left for a later pipeline, never one of
// its own client's; a request of every client (a retrack, a forget)
// passes nothing, and once one is left, so is everything after it.
func (w *worker) pick(batch, queued []request) ([]request, []request) {
	rest := queued[:0] // written behind the reads
	lifecycles, blocked := 0, false
	for _, r := range queued {
		key := r.key()
		take := !blocked && len(batch) < maxBatch
		switch {
		case !take:
		case key == "":
			take = len(rest) == 0
		case len(rest) > 0:
			_, held := w.held[key]
			take = !held
		}
		if take && r.lifecycle() {
			if take = lifecycles < lifecycleTurn; take {
				lifecycles++
			}
		}
		if take {
			batch = append(batch, r)
			continue
		}
		rest = append(rest, r)
		if key == "" || len(batch) == maxBatch {
			blocked = true
		} else {
			w.held[key] = struct{}{}
		}
	}
	clear(w.held)
	clear(queued[len(rest):]) // drop references to what was taken
	return batch, rest
}

func (w *worker) rebindPending(ctx context.Context) {
	w.mu.Lock()
	services := make([]string, 0, len(w.pending))
	for s := range w.pending {
		services = append(services, s)
	}
	clear(w.pending)
	w.mu.Unlock()
	var p pipeline
	for _, s := range services {
		for _, b := range w.byService[s] {
			if !b.announced || !w.u.reg.IsLive(s, b.bkid) {
				w.announce(ctx, b, &p)
			}
		}
	}
	if len(p.ops) > 0 {
		w.exec(ctx, &p)
	}
}

// opKind says what one PUBLISH in a pipeline was for.
type opKind uint8

const (
	opConnected opKind = iota
	opMessage
	opDisconnected
	opPublish
	opEvent
	opTrack   // HSET of the client table
	opUntrack // HDEL of the client table
	opMark    // SET of the mark that a session may be resumed (table: its key)
	opUnmark  // DEL of that mark
)

type op struct {
	kind    opKind
	b       *binding
	bkid    string
	table   string // opTrack, opUntrack: the client table; opMark, opUnmark: the mark
	payload []byte
	req     *request // opMessage
	attempt int
	cmd     *redis.IntCmd
}

type pipeline struct {
	ops   []op
	retry []op // messages that reached nobody, offered to another backend
}

func (p *pipeline) add(o op) { p.ops = append(p.ops, o) }

// reset empties the pipeline for the next batch, keeping its arrays and
// dropping what they referred to.
func (p *pipeline) reset() {
	clear(p.ops)
	clear(p.retry)
	p.ops, p.retry = p.ops[:0], p.retry[:0]
}

// process publishes one batch of requests in one pipeline.
func (w *worker) process(ctx context.Context, batch []request) {
	p := &w.p
	defer p.reset()
	var barriers []func()
	for i := range batch {
		r := &batch[i]
		switch r.kind {
		case reqConnect:
			if r.resumed && w.u.cfg.Ended != nil {
				// The session is open again: a mark that the end of its
				// older connection left, after the resume claimed it,
				// would let a token resume it once it ends for good (a
				// kick).
				p.add(op{kind: opUnmark, table: w.u.cfg.Ended(r.client.CID())})
			}
			b := w.bind(r.client)
			b.bkid, b.resumed, b.rooms = r.bkid, r.resumed, r.rooms
			w.announce(ctx, b, p)
		case reqMessage:
			b := w.bindings[r.client.CID()]
			if b == nil { // connect failed to enqueue; bind now
				b = w.bind(r.client)
			}
			w.message(ctx, b, r, 1, p)
		case reqDisconnect:
			w.unbind(r.client, r.code, r.reason, r.resumed, p)
		case reqDrop:
			if b := w.bindings[r.client.CID()]; b != nil && b.client == r.client {
				w.forget(b, p)
			}
		case reqPublish:
			p.add(op{kind: opPublish, bkid: r.bkid, payload: r.data})
		case reqBarrier:
			barriers = append(barriers, r.then)
		case reqEvent:
			if b := w.bindings[r.client.CID()]; b != nil && w.announce(ctx, b, p) {
				p.add(op{kind: opEvent, b: b, bkid: b.bkid, payload: r.data})
			} else {
				w.u.m.Drops.WithLabelValues(metrics.DropNoBackend).Inc()
			}
		case reqRetrack:
			for _, b := range w.bindings {
				if b.announced {
					w.track(b, p)
				}
			}
		case reqForget:
			for _, b := range w.bindings {
				b.announced, b.tracked = false, false
			}
		}
	}
	w.exec(ctx, p)
	for i := range batch {
		if batch[i].kind == reqConnect {
			w.u.settled(batch[i].client.CID())
		}
	}
	// Every frame before a barrier was in this pipeline or an earlier one,
	// and has been answered.
	for _, fn := range barriers {
		fn()
	}
}

func (w *worker) bind(c Client) *binding {
	b := &binding{client: c}
	w.bindings[c.CID()] = b
	svc := w.byService[c.Service()]
	if svc == nil {
		svc = make(map[string]*binding)
		w.byService[c.Service()] = svc
	}
	svc[c.CID()] = b
	return b
}

func (w *worker) unbind(c Client, code int, reason string, resumable bool, p *pipeline) {
	cid := c.CID()
	b := w.bindings[cid]
	if b == nil || b.client != c {
		return // a session resumed on this node under the cid has it now
	}
	resumable = resumable && w.u.cfg.Ended != nil && w.u.cfg.ResumeWindow > 0
	if resumable {
		// Before client_disconnected: a backend that hears the client
		// left may see it resume at once.
		p.add(op{kind: opMark, b: b, bkid: b.bkid, table: w.u.cfg.Ended(cid)})
	}
	if b.announced {
		p.add(op{kind: opDisconnected, b: b, bkid: b.bkid,
			payload: protocol.AppendClientDisconnected(nil, cid, code, reason, resumable)})
	}
	w.forget(b, p)
}

// forget drops b, and its line of the client table.
func (w *worker) forget(b *binding, p *pipeline) {
	c := b.client
	cid := c.CID()
	delete(w.bindings, cid)
	if svc := w.byService[c.Service()]; svc != nil {
		delete(svc, cid)
		if len(svc) == 0 {
			delete(w.byService, c.Service())
		}
	}
	if b.tracked {
		if table := w.u.clients(); table != "" {
			p.add(op{kind: opUntrack, b: b, table: table})
		}
	}
}

// track writes b's client and backend to the node's client table, ahead
// of the client_connected that follows it in the pipeline: a node that
// dies between the two leaves the backend a client_disconnected for a
// client it never heard of, never a client it is not told has gone.
func (w *worker) track(b *binding, p *pipeline) {
	if table := w.u.clients(); table != "" {
		b.tracked = true
		p.add(op{kind: opTrack, b: b, bkid: b.bkid, table: table})
	}
}

// announce binds b to a live backend and queues client_connected there,
// unless its backend is live and already announced. It reports whether b has
// a live backend.
func (w *worker) announce(ctx context.Context, b *binding, p *pipeline) bool {
	c := b.client
	bkid := w.u.reg.Pick(ctx, c.Service(), b.bkid)
	if bkid == "" {
		b.announced = false
		return false
	}
	if b.announced && bkid == b.bkid {
		return true
	}
	// Marked announced now, so that frames later in this pipeline go to the
	// same backend after client_connected; undone in exec if the publish
	// fails.
	b.bkid, b.announced = bkid, true
	w.track(b, p)
	p.add(op{kind: opConnected, b: b, bkid: bkid,
		payload: protocol.AppendClientConnected(nil, c.CID(), c.Service(), c.Remote(), c.User(), b.resumed, b.rooms)})
	b.resumed, b.rooms = false, nil
	return true
}

func (w *worker) message(ctx context.Context, b *binding, r *request, attempt int, p *pipeline) {
	if !w.announce(ctx, b, p) {
		w.answer(r, protocol.ErrTextBackendUnavailable, metrics.DropNoBackend)
		return
	}
	if !w.allow(b.bkid, r.heavy) {
		w.answer(r, protocol.ErrTextBackendBusy, metrics.DropBackendBusy)
		return
	}
	p.add(op{kind: opMessage, b: b, bkid: b.bkid, req: r, attempt: attempt, payload: r.data})
}

// exec runs the pipeline, answers the clients, and offers frames that
// reached nobody to another backend, until none is left to try.
func (w *worker) exec(ctx context.Context, p *pipeline) {
	for len(p.ops) > 0 {
		w.publishBatch(ctx, p)
		ops := p.retry
		clear(p.ops)
		p.ops, p.retry = p.ops[:0], nil
		for _, o := range ops {
			w.message(ctx, o.b, o.req, o.attempt+1, p)
		}
	}
}

// allow tells whether a message to bkid is within the worker's share of
// the backend's rate. A flood of clients then costs them their messages
// ("backend busy"), never the backend its subscription: Redis cuts a
// subscriber that reads slower than it is published to (its pub/sub
// output buffer limit), and the backend would look dead to every client
// of its service. A heavy message leaves the last quarter of the burst to
// the light ones.
func (w *worker) allow(bkid string, heavy bool) bool {
	rate := w.u.cfg.BackendRate / float64(len(w.u.workers))
	if rate <= 0 {
		return true
	}
	b := w.rates[bkid]
	if b == nil {
		// Bounded like channels: the bkids this node ever published to.
		b = new(ratelimit.Bucket)
		w.rates[bkid] = b
	}
	burst, keep := max(1, int(rate)), 0.0
	if heavy {
		keep = float64(burst) / 4
	}
	return b.AllowAbove(time.Now(), rate, burst, keep)
}

// publishBatch sends the pipeline's operations to Redis in one round trip and
// settles each: answers the client, marks a backend that nobody listens to
// as dead, and sets aside in p.retry the frames another backend may take.
func (w *worker) publishBatch(ctx context.Context, p *pipeline) {
	pipe := w.u.rdb.Pipeline()
	for i := range p.ops {
		o := &p.ops[i]
		switch o.kind {
		case opTrack:
			o.cmd = pipe.HSet(ctx, o.table, o.b.client.CID(), o.bkid)
		case opUntrack:
			o.cmd = pipe.HDel(ctx, o.table, o.b.client.CID())
		case opMark:
			pipe.Set(ctx, o.table, o.bkid, w.u.cfg.ResumeWindow)
		case opUnmark:
			pipe.Del(ctx, o.table)
		default:
			o.cmd = pubsub.Publish(ctx, pipe, w.u.sharded, w.channel(o.bkid), o.payload)
		}
	}
	start := time.Now()
	_, err := pipe.Exec(ctx)
	w.u.m.UplinkLatency.Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, context.Canceled) {
		w.u.m.RedisErrors.WithLabelValues("uplink").Inc()
		w.u.log.Debug("uplink publish failed", "err", err)
	}
	m := w.u.m
	for i := range p.ops {
		o := &p.ops[i]
		if o.kind == opTrack || o.kind == opUntrack || o.kind == opMark || o.kind == opUnmark {
			continue // a failed write is written again with the next announce
		}
		n, err := o.cmd.Result()
		svc := ""
		if o.b != nil {
			svc = o.b.client.Service()
		}
		switch {
		case err != nil:
			switch o.kind {
			case opConnected:
				o.b.announced = false
			case opMessage:
				w.answer(o.req, protocol.ErrTextBrokerUnavailable, metrics.DropBrokerDown)
			case opDisconnected, opPublish, opEvent:
				m.Drops.WithLabelValues(metrics.DropBrokerDown).Inc()
			}
		case n == 0:
			switch o.kind {
			case opConnected:
				w.u.reg.MarkDead(svc, o.bkid)
				if o.b.bkid == o.bkid {
					o.b.announced = false
				}
			case opMessage:
				w.u.reg.MarkDead(svc, o.bkid)
				if o.b.bkid == o.bkid {
					o.b.announced = false
				}
				switch {
				case w.bindings[o.b.client.CID()] != o.b:
					// The client left in this same batch; offering its frame
					// to another backend would bind a client that is gone.
					w.answer(o.req, protocol.ErrTextBackendUnavailable, metrics.DropNoBackend)
				case o.attempt < maxAttempts:
					p.retry = append(p.retry, *o)
				default:
					w.answer(o.req, protocol.ErrTextBackendUnavailable, metrics.DropNoBackend)
				}
			case opDisconnected, opPublish, opEvent:
				m.Drops.WithLabelValues(metrics.DropNoBackend).Inc()
			}
		default:
			switch o.kind {
			case opConnected:
				m.MessagesOut.WithLabelValues(metrics.KindConnected).Inc()
				c := o.b.client
				w.u.log.Info("client bound to backend", "cid", c.CID(), "service", c.Service(), "bkid", o.bkid)
			case opMessage:
				w.u.outMessage.Inc()
				if id := o.req.id; id != nil {
					o.req.client.Send(protocol.AppendAck(make([]byte, 0, protocol.AckSize(id)), id))
					w.u.outAck.Inc()
				}
			case opDisconnected:
				m.MessagesOut.WithLabelValues(metrics.KindDisconnected).Inc()
			case opEvent:
				m.MessagesOut.WithLabelValues(metrics.KindRoomEvent).Inc()
			}
		}
	}
}

// answer tells a client that its frame was not delivered, when the frame
// had an id, and counts the drop.
func (w *worker) answer(r *request, text, reason string) {
	w.u.m.Drops.WithLabelValues(reason).Inc()
	if r.id == nil {
		return
	}
	r.client.Send(protocol.AppendError(nil, r.id, text))
	w.u.m.MessagesOut.WithLabelValues(metrics.KindError).Inc()
}
