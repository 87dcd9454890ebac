// Command dmb-demo runs the demo chat backend (package demo) as its own
// process. Like any DMB backend it talks only to Redis: point it at the Redis
// that the DMB nodes use, with the same DMB_PREFIX, and open the demo page.
//
// It reads the same environment as dmb itself (docs/configuration.md); of
// those it uses the REDIS_* settings, DMB_PREFIX, DMB_LOG_LEVEL and
// DMB_LOG_FORMAT. With DEMO_HTTP_ADDR (e.g. ":8090") it also serves the demo
// page there, for a proxy to put in front (docker-compose.yml does). It
// stops on SIGINT or SIGTERM, after telling DMB that it leaves.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/demo"
)

func main() {
	if err := run(); err != nil {
		slog.Error("dmb-demo stopped", "err", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	log, _, err := config.NewLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rdb := cfg.RedisClient()
	defer rdb.Close()

	log.Info("dmb-demo starting", "redis_mode", cfg.RedisMode(), "prefix", cfg.Prefix)
	if addr := os.Getenv("DEMO_HTTP_ADDR"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("DEMO_HTTP_ADDR: %w", err)
		}
		srv := &http.Server{Handler: demo.Page(), ReadHeaderTimeout: 10 * time.Second}
		pageDone := make(chan error, 1)
		go func() { pageDone <- srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-pageDone
		}()
		log.Info("serving the demo page", "addr", addr)
	}
	if err := demo.Run(ctx, rdb, backend.Options{Prefix: cfg.Prefix, Logger: log}); err != nil {
		return err
	}
	log.Info("dmb-demo stopped")
	return nil
}
