// Package node assembles one DMB node from its parts, serves its HTTP
// endpoints, and runs and stops the parts in order. It holds no protocol
// logic of its own: main.go and the integration tests both start nodes
// through it.
//
// The data path, one way each:
//
//	up:   browser --WebSocket--> internal/wsconn -> broker (session: reads,
//	      decodes, error limit) -> uplink (binds the client to a live
//	      backend, pipelines PUBLISH dmb:uplink:{bkid}, acks) -> Redis -> backend
//
//	down: backend -> PUBLISH dmb:{bkid} -> Redis -> downlink (subscription,
//	      decodes broadcast/direct/kick) -> broker (fan-out to the
//	      sessions of the service; each session's send queue and writer)
//	      -> internal/wsconn -> browser
//
//	registry: backends register on dmb:register and are watched for
//	      liveness; the broker asks it before it admits a client, the
//	      uplink which backend a client is bound to, the downlink which
//	      service a bkid belongs to.
//
// Run starts the registry, the uplink, the broker's flushers and watchdog,
// the downlink and the HTTP listeners, and on shutdown stops them in the
// order that loses nothing: stop accepting, close the clients (after the
// uplink answered what they sent), stop the broker's loops and the
// downlink, drain the uplink, stop the registry.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/broker"
	dmbjs "github.com/dmb-broker/dmb/clients/js"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/downlink"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/wsconn"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/nodes"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
	"github.com/dmb-broker/dmb/registry"
	"github.com/dmb-broker/dmb/resume"
	"github.com/dmb-broker/dmb/uplink"
)

// Options are what a node takes besides its Config.
type Options struct {
	Logger *slog.Logger
	// Level, when set, is the level of Logger, which the admin listener
	// changes at run time.
	Level *slog.LevelVar
	// Version is reported by the admin listener.
	Version string
	// Listener, when set, is served instead of listening on Config.Addr().
	Listener net.Listener
	// Root, when set, serves the paths the node does not (the demo page).
	Root http.Handler
}

// Node is one running DMB process's worth of parts.
type Node struct {
	cfg     config.Config
	log     *slog.Logger
	level   *slog.LevelVar
	version string
	started time.Time
	rdb     redis.UniversalClient
	m       *metrics.Metrics
	ln      net.Listener
	srv     *http.Server

	tcpLn  net.Listener // nil when DMB_TCP_PORT is 0
	tcpTLS *tls.Config

	adminLn  net.Listener // nil when DMB_ADMIN_ADDR is empty
	adminSrv *http.Server

	drain     chan struct{} // closed by Drain
	drainOnce sync.Once

	reg     *registry.Registry
	nodes   *nodes.Nodes
	resumes *resume.Manager
	up      *uplink.Uplink
	down    *downlink.Downlink
	brk     *broker.Broker
}

// New builds a node and opens its listener; nothing runs until Run.
func New(cfg config.Config, opts Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", cfg.NodeID)
	trusted, err := cfg.TrustedPrefixes()
	if err != nil {
		return nil, err
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load DMB_TLS_CERT / DMB_TLS_KEY: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var verifier *auth.Verifier
	if cfg.JWTSecret != "" {
		if verifier, err = auth.NewVerifier(cfg.JWTSecret); err != nil {
			return nil, fmt.Errorf("DMB_JWT_SECRET: %w", err)
		}
	}
	level := opts.Level
	if level == nil {
		level = new(slog.LevelVar)
	}
	ln := opts.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Addr()); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Addr(), err)
		}
	}
	promReg := prometheus.NewRegistry()
	m := metrics.New(promReg)
	pace := newAcceptPace(cfg.AcceptRate, m.AcceptsPaced)
	ln = wsconn.Listen(listenClients(ln, cfg.ClientSendBuffer, pace))
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	var adminLn net.Listener
	if cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on DMB_ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
		}
	}
	ch := protocol.NewChannels(cfg.Prefix)
	rdb := cfg.RedisClient()
	pubsub.FollowFailovers(rdb)

	n := &Node{
		cfg: cfg, log: log, level: level, version: opts.Version, started: time.Now(),
		rdb: rdb, m: m, ln: ln, adminLn: adminLn, drain: make(chan struct{}),
	}
	n.reg = registry.New(rdb, registry.Config{
		Channels: ch, NodeID: cfg.NodeID, Logger: log, Metrics: m,
		BackendTimeout: cfg.BackendTimeout, BackendRetention: cfg.BackendRetention,
		MaxServices: cfg.MaxServices, BKIDLookupRate: cfg.BKIDLookupRate,
	})
	n.nodes = nodes.New(rdb, nodes.Config{
		Channels: ch, NodeID: cfg.NodeID, Timeout: cfg.BackendTimeout, Logger: log, Metrics: m,
		ResumeWindow: cfg.ResumeWindow,
		Lost:         n.lost,
		Retrack: func(ctx context.Context) {
			if err := n.up.Retrack(ctx); err != nil {
				log.Warn("client table not written again", "err", err)
			}
		},
	})
	n.resumes, err = resume.NewManager(rdb, n.reg, resume.Config{
		Channels: ch, NodeID: cfg.NodeID, Secret: cfg.SessionSecret, Window: cfg.ResumeWindow,
		History: history.Config{Size: cfg.HistorySize, TTL: cfg.HistoryTTL, MaxBytes: cfg.MaxBackendBytes}, Logger: log,
		Holder: n.nodes.Holder, Own: n.nodes.Clients,
	})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("DMB_SESSION_SECRET: %w", err)
	}
	n.up = uplink.New(rdb, n.reg, uplink.Config{
		Channels: ch, Workers: cfg.UplinkWorkers, Logger: log, Metrics: m, BackendRate: cfg.BackendRate,
		Clients: n.nodes.Clients, Ended: n.resumes.Keys().Ended, ResumeWindow: cfg.ResumeWindow,
	})
	n.reg.OnChange(n.up.BackendsChanged)
	n.brk = broker.New(n.reg, n.up, broker.Config{
		SendQueue:         cfg.SendQueue,
		SendQueueBytes:    cfg.SendQueueBytes,
		QueueBudget:       cfg.QueueBudget,
		MaxMessageBytes:   cfg.MaxMessageBytes,
		ClientErrorLimit:  cfg.ClientErrorLimit,
		ClientRate:        cfg.ClientRate,
		ClientBurst:       cfg.ClientBurst,
		WriteTimeout:      cfg.WriteTimeout,
		FrameTimeout:      cfg.FrameTimeout,
		AllowedOrigins:    cfg.AllowedOrigins,
		TrustedProxies:    trusted,
		MaxClients:        maxClients(cfg, log),
		MaxClientsPerAddr: cfg.MaxClientsPerIP,
		HandshakeRate:     cfg.HandshakeRate,
		RefusalLogEvery:   cfg.RefusalLogEvery,
		MaxClientRooms:    cfg.MaxClientRooms,
		Auth:              verifier,
		Resumes:           n.resumesIfOn(),
		Splice: func(ctx context.Context, fn func(resume.View)) error {
			return n.down.Splice(ctx, func(v downlink.View) { fn(v) })
		},
		Logger:  log,
		Metrics: m,
	})
	n.down = downlink.New(rdb, n.reg, n.brk, n.up, downlink.Config{
		Channels: ch, NodeID: cfg.NodeID, Logger: log, Metrics: m,
		MaxQueued: cfg.DownlinkBuffer, MaxPayload: cfg.MaxBackendBytes,
		Users: verifier != nil, Nodes: n.nodes.Live, OnUp: n.resumes.Up,
	})
	n.reg.Watch(n.down)
	m.QueuedFrames(n.brk.QueuedFrames)
	m.QueuedBytes(n.brk.QueuedBytes)
	if adminLn != nil {
		n.adminSrv = &http.Server{
			Handler:           n.adminHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
	}

	mux := http.NewServeMux()
	mux.Handle("GET /ws/{service}", n.brk)
	// The HTTP fallback: an event stream down, POSTs up.
	mux.HandleFunc("GET /sse/{service}", n.brk.ServeSSE)
	mux.HandleFunc("POST /sse/{service}/{key}", n.brk.ServeSSEPost)
	mux.HandleFunc("OPTIONS /sse/{service}/{key}", n.brk.ServeSSEPost)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", n.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}))
	// The browser client, with its TypeScript declarations.
	mux.Handle("/dmb.js", dmbjs.Handler())
	mux.Handle("/dmb.d.ts", dmbjs.Handler())
	if opts.Root != nil {
		mux.Handle("/", opts.Root)
	}
	// Bounds on what a connection may cost before it is a session: its
	// request must come whole within the handshake timeout, headers
	// included, and be small; a keep-alive connection idle for the idle
	// timeout is closed; a slow reader of a response is cut after the
	// write timeout. A WebSocket's connection leaves these behind at the
	// upgrade (the hijack clears the deadlines) for the session's own.
	n.srv = &http.Server{
		Handler:           mux,
		ConnContext:       wsconn.ConnContext,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		ReadTimeout:       cfg.HandshakeTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if addr := cfg.TCPAddr(); addr != "" {
		tcpLn, err := net.Listen("tcp", addr)
		if err != nil {
			ln.Close()
			if adminLn != nil {
				adminLn.Close()
			}
			return nil, fmt.Errorf("listen on DMB_TCP_PORT %s: %w", addr, err)
		}
		n.tcpLn, n.tcpTLS = listenClients(tcpLn, cfg.ClientSendBuffer, pace), tlsConfig
	}
	return n, nil
}

// prepareSessions loads the history function and reads the session
// secret as soon as Redis answers, so that the node is ready; the
// downlink does it again each time its subscription comes back (on a
// cluster it holds no subscription until a backend registers).
func (n *Node) prepareSessions(ctx context.Context) error {
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		n.resumes.Up(ctx)
		if n.resumes.Ready() {
			return nil
		}
		select {
		case <-retry.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// resumesIfOn returns the resume manager, or nil when DMB_RESUME_WINDOW
// turns resuming off.
func (n *Node) resumesIfOn() broker.Resumes {
	if n.cfg.ResumeWindow <= 0 {
		return nil
	}
	return n.resumes
}

// lost is what the node does when the other nodes took it for dead: the
// backends were told its clients left, so the uplink forgets them and
// they are closed, to come back as new clients.
func (n *Node) lost(ctx context.Context) {
	if err := n.up.Forget(ctx); err != nil {
		n.log.Warn("uplink did not forget the clients", "err", err)
	}
	n.brk.CloseAll(protocol.CloseGoingAway, "node lost contact with redis")
}

// Addr is the address the node listens on.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

// TCPAddr is the address of TCP clients, nil when DMB_TCP_PORT is 0.
func (n *Node) TCPAddr() net.Addr {
	if n.tcpLn == nil {
		return nil
	}
	return n.tcpLn.Addr()
}

// AdminAddr is the admin listener's address, nil when it is off.
func (n *Node) AdminAddr() net.Addr {
	if n.adminLn == nil {
		return nil
	}
	return n.adminLn.Addr()
}

// Drain makes Run shut down as if its context ended: clients are closed
// with 1001, so that they reconnect to another node, and Run returns.
func (n *Node) Drain() { n.drainOnce.Do(func() { close(n.drain) }) }

func (n *Node) draining() bool {
	select {
	case <-n.drain:
		return true
	default:
		return false
	}
}

// Broker returns the node's broker (for tests and diagnostics).
func (n *Node) Broker() *broker.Broker { return n.brk }

// Ready reports whether the node is subscribed to Redis and Redis answers.
func (n *Node) Ready(ctx context.Context) bool {
	if !n.reg.Ready() || !n.down.Ready() || !n.resumes.Ready() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return n.rdb.Ping(ctx).Err() == nil
}

func (n *Node) serveReady(w http.ResponseWriter, r *http.Request) {
	if !n.Ready(r.Context()) {
		http.Error(w, "redis unavailable", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Run serves until ctx ends, then shuts down gracefully within
// DMB_SHUTDOWN_TIMEOUT: it stops accepting, closes clients with 1001 and
// tells their backends, publishes what the uplink holds, and stops. It
// returns nil after a clean shutdown.
func (n *Node) Run(ctx context.Context) error {
	// Each part has its own lifetime, so they stop in order.
	regCtx, stopReg := context.WithCancel(context.Background())
	downCtx, stopDown := context.WithCancel(context.Background())
	upCtx, stopUp := context.WithCancel(context.Background())
	brkCtx, stopBrk := context.WithCancel(context.Background())
	nodesCtx, stopNodes := context.WithCancel(context.Background())
	defer stopNodes()
	defer stopReg()
	defer stopDown()
	defer stopUp()
	defer stopBrk()

	failed := make(chan error, 8)
	part := func(ctx context.Context, name string, run func(context.Context) error) chan struct{} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := run(ctx); err != nil && ctx.Err() == nil {
				failed <- fmt.Errorf("%s: %w", name, err)
			}
		}()
		return done
	}
	regDone := part(regCtx, "registry", n.reg.Run)
	sessionsDone := part(downCtx, "sessions", n.prepareSessions)
	nodesDone := part(nodesCtx, "nodes", n.nodes.Run)
	brkDone := part(brkCtx, "broker", n.brk.Run)
	upDone := part(upCtx, "uplink", n.up.Run)
	downDone := part(downCtx, "downlink", n.down.Run)
	srvDone := part(context.Background(), "http", func(context.Context) error {
		if err := n.srv.Serve(n.ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	tcpCtx, stopTCP := context.WithCancel(context.Background())
	defer stopTCP()
	tcpDone := make(chan struct{})
	if n.tcpLn != nil {
		tcpDone = part(tcpCtx, "tcp", func(ctx context.Context) error {
			return n.brk.ServeTCP(ctx, n.tcpLn, broker.TCPOptions{HandshakeTimeout: n.cfg.HandshakeTimeout, TLS: n.tcpTLS})
		})
		n.log.Info("tcp listener started", "addr", n.tcpLn.Addr().String())
	} else {
		close(tcpDone)
	}
	adminDone := make(chan struct{})
	if n.adminSrv != nil {
		adminDone = part(context.Background(), "admin", func(context.Context) error {
			if err := n.adminSrv.Serve(n.adminLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		n.log.Info("admin listener started", "addr", n.adminLn.Addr().String())
	} else {
		close(adminDone)
	}
	n.log.Info("dmb node started", "addr", n.ln.Addr().String(), "tls", n.cfg.TLSCert != "")

	var runErr error
	select {
	case <-ctx.Done():
	case <-n.drain:
	case runErr = <-failed:
		n.log.Error("node part failed", "err", runErr)
	}

	n.log.Info("shutting down", "timeout", n.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	// The HTTP server stops accepting at once, and waits for its requests
	// to end: the event streams of the HTTP fallback end with their
	// sessions, which the broker's shutdown closes meanwhile.
	httpDown := make(chan error, 1)
	go func() { httpDown <- n.srv.Shutdown(sctx) }()
	stopTCP() // stops accepting; a hello still to come gets 1001
	if err := n.brk.Shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	if err := <-httpDown; err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	<-srvDone
	<-tcpDone
	stopBrk() // every session has ended: its flushers and watchdog go
	<-brkDone
	stopDown()
	<-downDone
	<-sessionsDone
	n.up.Drain()
	select {
	case <-upDone:
	case <-sctx.Done():
		errs = append(errs, errors.New("uplink not drained at shutdown timeout"))
		stopUp()
		<-upDone
	}
	stopNodes()
	<-nodesDone
	if err := n.nodes.Leave(sctx); err != nil {
		// Not a failed shutdown: the other nodes, or the next to start,
		// take this node for dead and report what it left.
		n.log.Warn("node record not removed", "err", err)
	}
	stopReg()
	<-regDone
	if n.adminSrv != nil {
		if err := n.adminSrv.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("admin shutdown: %w", err))
		}
	}
	<-adminDone
	if err := n.rdb.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close redis: %w", err))
	}
	if runErr != nil {
		errs = append(errs, runErr)
	}
	err := errors.Join(errs...)
	if err == nil {
		n.log.Info("shutdown complete")
	}
	return err
}
