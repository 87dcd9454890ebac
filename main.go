// Command dmb is the Duplex Message Broker: it connects browsers on
// WebSocket to backends that talk only to Redis. See README.md and docs/.
//
// With -dev it also starts an embedded Redis on loopback, the demo chat
// backend and the demo page at /, so that one command gives a working
// system on a machine that has nothing but Go.
package main

import (
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/dmb-broker/dmb/internal/devredis"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/demo"
	"github.com/dmb-broker/dmb/internal/redisprobe"
	"github.com/dmb-broker/dmb/node"
)

// release is the version of this source tree.
//
//go:embed VERSION
var release string

// version is stamped at build time with -ldflags "-X main.version=..."
// (scripts/build.sh does); a plain go build or go run reports the release
// with "-dev".
var version string

func main() {
	if version == "" {
		version = strings.TrimSpace(release) + "-dev"
	}
	dev := flag.Bool("dev", false, "run with an embedded Redis (on 127.0.0.1:6379, or REDIS_PORT, or a free port), the demo backend and the demo page at /")
	showVersion := flag.Bool("version", false, "print the version and exit")
	healthcheck := flag.Bool("healthcheck", false, "ask the local node's /healthz and exit 0 when it answers (for container health checks)")
	flag.Usage = usage
	flag.Parse()
	if *showVersion {
		_, _ = os.Stdout.WriteString(version + "\n")
		return
	}
	if *healthcheck {
		if err := checkHealth(); err != nil {
			config.StartupLogger().Error("health check failed", "err", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*dev); err != nil {
		slog.Error("dmb stopped", "err", err)
		os.Exit(1)
	}
}

// usage is what dmb -h prints: the flags, then every setting.
func usage() {
	w := flag.CommandLine.Output()
	_, _ = fmt.Fprintf(w, "dmb %s, the Duplex Message Broker: browsers on WebSocket, backends on Redis.\n\nUsage: dmb [flags]\n\nFlags:\n", version)
	flag.PrintDefaults()
	_, _ = fmt.Fprintln(w)
	_ = config.WriteUsage(w)
}

func run(dev bool) error {
	slog.SetDefault(config.StartupLogger())
	cfg, err := config.Load()
	var bad config.Errors
	if errors.As(err, &bad) {
		for _, e := range bad {
			slog.Error("bad setting", "setting", e.Name, "value", e.Value, "want", e.Want)
		}
		return fmt.Errorf("%d bad setting(s), each logged above; `dmb -h` lists every setting with its default", len(bad))
	}
	if err != nil {
		return err
	}
	log, level, err := config.NewLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	redis.SetLogger(node.RedisLogger(log))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	opts := node.Options{Logger: log, Level: level, Version: version}
	var demoDone chan error
	if dev {
		_, portSet := os.LookupEnv("REDIS_PORT")
		mr, err := startEmbeddedRedis(cfg.RedisPort, portSet)
		if err != nil {
			return err
		}
		defer mr.Close()
		cfg.RedisHost, cfg.RedisPort = mr.Host(), atoi(mr.Port())
		if mr.Port() == strconv.Itoa(defaultRedisPort) || portSet {
			log.Info("dev mode: embedded Redis", "addr", mr.Addr())
		} else {
			// A Redis of the system's likely holds 6379: backends and
			// redis-cli that use the default would talk to it instead.
			log.Warn(fmt.Sprintf("dev mode: port %d is taken, so the embedded Redis listens on %s: "+
				"use redis-cli -p %s and REDIS_PORT=%s for backends (or choose the port with REDIS_PORT)",
				defaultRedisPort, mr.Addr(), mr.Port(), mr.Port()), "addr", mr.Addr())
		}
		opts.Root = demo.Page()
		rdb := redis.NewClient(cfg.RedisOptions())
		defer rdb.Close()
		demoCtx, stopDemo := context.WithCancel(ctx)
		defer stopDemo()
		demoDone = make(chan error, 1)
		go func() {
			demoDone <- demo.Run(demoCtx, rdb, backend.Options{Prefix: cfg.Prefix, Logger: log.With("component", "demo")})
		}()
		defer func() { stopDemo(); <-demoDone }()
	}

	ln, err := listen(cfg)
	if err != nil {
		return err
	}
	opts.Listener = ln
	n, err := node.New(cfg, opts)
	if err != nil {
		ln.Close()
		return err
	}
	log.Info("dmb", "version", version, "addr", n.Addr().String(), "redis", cfg.RedisTarget())
	if dev {
		log.Info("dev mode: open the demo", "url", "http://localhost:"+strconv.Itoa(n.Addr().(*net.TCPAddr).Port)+"/")
	}
	probeCtx, stopProbe := context.WithCancel(ctx)
	probed := make(chan struct{})
	probeRDB := cfg.RedisClient()
	go func() {
		defer close(probed)
		redisprobe.Run(probeCtx, probeRDB, redisprobe.Config{Target: cfg.RedisTarget(), Logger: log})
	}()
	defer func() { stopProbe(); <-probed; probeRDB.Close() }()
	return n.Run(ctx)
}

// listen opens the HTTP and WebSocket listener; its error names the
// settings that choose the address.
func listen(cfg config.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", cfg.Addr())
	if err == nil {
		return ln, nil
	}
	hint := "set DMB_BIND to an address of this host (or empty for every interface) and DMB_PORT to a free port"
	if errors.Is(err, syscall.EADDRINUSE) {
		hint = fmt.Sprintf("another process listens on port %d: stop it, or set DMB_PORT to a free port", cfg.Port)
	}
	return nil, fmt.Errorf("listen on DMB_BIND=%q DMB_PORT=%d (%s): %w; %s", cfg.Bind, cfg.Port, cfg.Addr(), err, hint)
}

// checkHealth asks /healthz of the node configured in the environment, on
// loopback: the image has no curl, so the binary checks itself.
func checkHealth() error {
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	scheme, client := "http", &http.Client{Timeout: 2 * time.Second}
	if cfg.TLSCert != "" {
		// The certificate names the public host, not loopback.
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // loopback self-check
	}
	resp, err := client.Get(scheme + "://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)) + "/healthz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthz answered %s", resp.Status)
	}
	return nil
}

// defaultRedisPort is where backends and redis-cli look for Redis unless
// told otherwise.
const defaultRedisPort = 6379

// startEmbeddedRedis starts miniredis on loopback, on port when it is free
// so that other backends find it where they expect Redis, else on any port;
// when the user chose the port (REDIS_PORT), there or not at all.
func startEmbeddedRedis(port int, chosen bool) (*miniredis.Miniredis, error) {
	mr := miniredis.NewMiniRedis()
	err := mr.StartAddr(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err == nil {
		return mr, devredis.AddFunctions(mr)
	}
	if chosen {
		return nil, fmt.Errorf("dev mode: start the embedded Redis on REDIS_PORT=%d: %w; choose a free port, or unset REDIS_PORT to take any", port, err)
	}
	mr = miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	return mr, devredis.AddFunctions(mr)
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
