package broker

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/internal/wsconn"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/registry"
	"github.com/dmb-broker/dmb/resume"
	"github.com/dmb-broker/dmb/uplink"
)

// Registry is what the broker asks before it accepts a client.
type Registry interface {
	Lookup(ctx context.Context, service string) (registry.Status, error)
}

// Uplink carries client events to backends.
type Uplink interface {
	Connect(c uplink.Client) error
	// Message is done with data and id when it returns; it waits for room
	// in the uplink's queue until ctx ends.
	Message(ctx context.Context, c uplink.Client, data, id json.RawMessage, heavy bool) error
	// Resume is Connect for a resumed session, bound to bkid when it is
	// live.
	Resume(c uplink.Client, bkid string, rooms []string) error
	// Disconnect tells the backend; resumable marks the session so.
	Disconnect(c uplink.Client, code int, reason string, resumable bool) error
	// Drop forgets a client whose session went on on another connection.
	Drop(c uplink.Client) error
	// After runs fn once every frame of c queued before has been answered;
	// it waits for room in the uplink's queue until ctx ends.
	After(ctx context.Context, c uplink.Client, fn func()) error
	// Settle returns once what was queued for the client cid has been
	// written to Redis; it waits until ctx ends.
	Settle(ctx context.Context, cid string) error
	// Event publishes a client's room_joined or room_left to its backend,
	// in order with its messages.
	Event(ctx context.Context, c uplink.Client, payload []byte) error
}

// Config describes a Broker.
type Config struct {
	SendQueue int // frames a session's queue may hold
	// SendQueueBytes bounds the bytes a session's queue holds, and
	// QueueBudget the node's queues together (see sendQueue.push); zero
	// means DefaultSendQueueBytes and DefaultQueueBudget.
	SendQueueBytes   int
	QueueBudget      int64
	MaxMessageBytes  int64
	ClientErrorLimit int
	// ClientRate is the frames a second a client may send on average, with
	// bursts of ClientBurst; 0 allows any rate.
	ClientRate   float64
	ClientBurst  int
	WriteTimeout time.Duration
	// FrameTimeout is the time a client has to finish a frame it began;
	// zero means DefaultFrameTimeout.
	FrameTimeout   time.Duration
	AllowedOrigins []string
	TrustedProxies []netip.Prefix
	// MaxClients bounds the sessions of the broker, MaxClientsPerAddr
	// those from one client address, HandshakeRate the handshakes a second
	// from one address (see limits.go); 0 is no bound.
	MaxClients        int
	MaxClientsPerAddr int
	HandshakeRate     float64
	// RefusalLogEvery is how often a refusal per close code is logged;
	// zero means DefaultRefusalLogEvery.
	RefusalLogEvery time.Duration
	// MaxClientRooms bounds the rooms one client is in; zero means
	// DefaultMaxClientRooms.
	MaxClientRooms int
	// Auth, when set, requires a token of every client (docs/protocol.md,
	// section 7).
	Auth *auth.Verifier
	// Resumes, when set, makes sessions resumable (section 11), and
	// Splice runs a resume's last step between two downlink messages; see
	// resume.go.
	Resumes Resumes
	Splice  func(ctx context.Context, fn func(resume.View)) error
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Broker serves clients and fans out to them. New makes it, Run runs its
// flushers and watchdog, its handlers (ServeHTTP) accept sessions, and
// Shutdown ends them.
type Broker struct {
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics
	reg Registry
	up  Uplink
	ws  wsconn.Options

	// messagesIn counts client frames, looked up once: WithLabelValues
	// hashes the labels and takes a lock on each call.
	messagesIn prometheus.Counter

	// ctx bounds what sessions wait for (a full uplink queue, a write of a
	// transport without a watchdog); cancelled by Shutdown when its time
	// runs out.
	ctx    context.Context
	cancel context.CancelFunc

	sessions sync.WaitGroup // every session's goroutine
	queues   queueLimits    // the bytes of the sessions' queues
	refusals refusalLog     // what of the refused clients is logged
	addrs    addrLimits     // handshakes a second per client address
	sse      ssePosts       // the HTTP fallback's streams, by the key of their POSTs
	adding   sync.Map       // cid -> chan struct{}: sessions being added and announced (accept.go)

	// fanoutEnd is when the last fan-out ended (UnixNano); see fanout.
	fanoutEnd atomic.Int64

	// ready holds the sessions whose writer a flusher is to run, while
	// flushersOn; both guarded by flushMu (read-held to hand a session
	// over), so that no session is handed over once Run closed ready.
	flushMu    sync.RWMutex
	flushersOn bool
	ready      chan *session

	mu        sync.RWMutex // guards the index below; see index.go
	closing   bool
	byCID     map[string]*session
	byService map[string]map[*session]struct{}
	byUser    map[userKey]map[*session]struct{} // when auth is on
	byAddr    map[string]int                    // sessions per client address, when limited
	rooms     map[roomKey]map[*session]struct{} // the members of each room; see rooms.go
}

// New returns a broker.
func New(reg Registry, up Uplink, cfg Config) *Broker {
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		cfg:        cfg,
		log:        cfg.Logger,
		m:          cfg.Metrics,
		reg:        reg,
		up:         up,
		messagesIn: cfg.Metrics.MessagesIn.WithLabelValues(metrics.KindMessage),
		ctx:        ctx,
		cancel:     cancel,
		byCID:      make(map[string]*session),
		byService:  make(map[string]map[*session]struct{}),
		byUser:     make(map[userKey]map[*session]struct{}),
		byAddr:     make(map[string]int),
		rooms:      make(map[roomKey]map[*session]struct{}),
	}
	b.ws = wsconn.Options{ReadLimit: cfg.MaxMessageBytes, WriteTimeout: cfg.WriteTimeout, Context: ctx}
	b.refusals.every = cmp.Or(cfg.RefusalLogEvery, DefaultRefusalLogEvery)
	b.addrs.rate, b.addrs.burst = cfg.HandshakeRate, max(1, int(2*cfg.HandshakeRate))
	b.queues.perSession = cmp.Or(cfg.SendQueueBytes, DefaultSendQueueBytes)
	b.queues.budget = cmp.Or(cfg.QueueBudget, DefaultQueueBudget)
	return b
}

// Defaults of the settings that a Config leaves at zero.
const (
	DefaultSendQueueBytes  = 4 << 20
	DefaultQueueBudget     = 1 << 30
	DefaultRefusalLogEvery = 10 * time.Second
	DefaultMaxClientRooms  = 100
)

// QueuedBytes returns what the sessions' queues take of the node's budget.
func (b *Broker) QueuedBytes() float64 { return float64(b.queues.queued.Load()) }

// readyClients bounds the sessions waiting for a flusher; a session that
// finds the list full gets a writer goroutine of its own.
const readyClients = 1 << 16

// Run runs the broker's flushers (one per processor) and its write
// watchdog until ctx ends, then waits for them. Sessions work without
// them, each writing on a goroutine of its own; run it from start to
// after Shutdown.
func (b *Broker) Run(ctx context.Context) error {
	ready := make(chan *session, readyClients)
	b.flushMu.Lock()
	b.ready, b.flushersOn = ready, true
	b.flushMu.Unlock()

	var loops sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		loops.Go(func() { b.flush(ready) })
	}
	loops.Go(func() { b.watchWrites(ctx) })
	<-ctx.Done()
	b.flushMu.Lock()
	b.flushersOn = false
	close(ready) // the flushers run the writers still in it, then end
	b.flushMu.Unlock()
	loops.Wait()
	return nil
}
