// Command dmb is the Duplex Message Broker: it connects browsers on
// WebSocket to backends that talk only to Redis. See README.md.
//
// With -dev it also starts an embedded Redis on loopback, the demo chat
// backend and the demo page at /, so that one command gives a working
// system on a machine that has nothing but Go.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/demo"
	"github.com/dmb-broker/dmb/node"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	dev := flag.Bool("dev", false, "run with an embedded Redis, the demo backend and the demo page at /")
	showVersion := flag.Bool("version", false, "print the version and exit")
	healthcheck := flag.Bool("healthcheck", false, "ask the local node's /healthz and exit 0 when it answers (for container health checks)")
	flag.Parse()
	if *showVersion {
		_, _ = os.Stdout.WriteString(version + "\n")
		return
	}
	if *healthcheck {
		if err := checkHealth(); err != nil {
			slog.Error("health check failed", "err", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*dev); err != nil {
		slog.Error("dmb stopped", "err", err)
		os.Exit(1)
	}
}

func run(dev bool) error {
	cfg, err := config.Load()
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
		mr, err := startEmbeddedRedis(cfg.RedisPort)
		if err != nil {
			return err
		}
		defer mr.Close()
		cfg.RedisHost, cfg.RedisPort = mr.Host(), atoi(mr.Port())
		log.Info("dev mode: embedded Redis", "addr", mr.Addr())
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

	n, err := node.New(cfg, opts)
	if err != nil {
		return err
	}
	log.Info("dmb", "version", version, "addr", n.Addr().String(), "redis", net.JoinHostPort(cfg.RedisHost, strconv.Itoa(cfg.RedisPort)))
	if dev {
		log.Info("dev mode: open the demo", "url", "http://localhost:"+strconv.Itoa(n.Addr().(*net.TCPAddr).Port)+"/")
	}
	return n.Run(ctx)
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

// startEmbeddedRedis starts miniredis on loopback, on port when it is free
// so that other backends find it where they expect Redis, else on any port.
func startEmbeddedRedis(port int) (*miniredis.Miniredis, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr(net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
		return mr, nil
	}
	mr = miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	return mr, nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
