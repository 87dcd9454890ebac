// Command dmb-demo runs the demo chat backend (package demo) as its own
// process. Like any DMB backend it talks only to Redis: point it at the Redis
// that the DMB nodes use, with the same DMB_PREFIX, and open the demo page.
//
// Configuration comes from the environment:
//
//	REDIS_HOST      Redis host (default localhost)
//	REDIS_PORT      Redis port (default 6379)
//	REDIS_PASSWORD  Redis password (default none)
//	REDIS_DB        Redis database number (default 0)
//	DMB_PREFIX      channel prefix of the DMB nodes (default dmb)
//
// It stops on SIGINT or SIGTERM, after telling DMB that it leaves.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/kelseyhightower/envconfig"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/demo"
)

type config struct {
	RedisHost     string `envconfig:"REDIS_HOST" default:"localhost" desc:"Redis host"`
	RedisPort     int    `envconfig:"REDIS_PORT" default:"6379" desc:"Redis port"`
	RedisPassword string `envconfig:"REDIS_PASSWORD" desc:"Redis password"`
	RedisDB       int    `envconfig:"REDIS_DB" default:"0" desc:"Redis database number"`
	Prefix        string `envconfig:"DMB_PREFIX" default:"dmb" desc:"channel prefix of the DMB nodes"`
}

func (c config) validate() error {
	if c.RedisPort < 1 || c.RedisPort > 65535 {
		return fmt.Errorf("REDIS_PORT %d: not a port", c.RedisPort)
	}
	if c.RedisDB < 0 {
		return fmt.Errorf("REDIS_DB %d: must not be negative", c.RedisDB)
	}
	if c.Prefix == "" {
		return errors.New("DMB_PREFIX: must not be empty")
	}
	return nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("dmb-demo", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	var cfg config
	if err := envconfig.Process("", &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	addr := net.JoinHostPort(cfg.RedisHost, strconv.Itoa(cfg.RedisPort))
	rdb := redis.NewClient(&redis.Options{Addr: addr, Password: cfg.RedisPassword, DB: cfg.RedisDB})
	defer rdb.Close()

	log.Info("dmb-demo starting", "redis", addr, "prefix", cfg.Prefix)
	if err := demo.Run(ctx, rdb, backend.Options{Prefix: cfg.Prefix, Logger: log}); err != nil {
		return err
	}
	log.Info("dmb-demo stopped")
	return nil
}
