package backend_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/node"
)

// The examples run against what a backend meets in production: a real
// redis-server, started here, and a DMB node on it.
var (
	redisAddr string // host:port of the redis-server
	dmbAddr   string // host:port of the DMB node
)

func TestMain(m *testing.M) {
	// The library's logs (registered, subscribed) would mix with what the
	// examples print.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	stop, err := startRedisAndDMB()
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend examples:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startRedisAndDMB starts a redis-server on a free loopback port and a node
// on it, and returns what stops both.
func startRedisAndDMB() (stop func(), err error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is not installed (Debian: apt-get install redis-server): %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := os.MkdirTemp("", "dmb-backend-example-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir)
	proctest.DieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	stopRedis := func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); os.RemoveAll(dir) }
	redisAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitFor(func() bool {
		rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1})
		defer rdb.Close()
		return rdb.Ping(context.Background()).Err() == nil
	}); err != nil {
		stopRedis()
		return nil, fmt.Errorf("redis-server on %s: %w", redisAddr, err)
	}

	cfg, err := config.Load()
	if err != nil {
		stopRedis()
		return nil, err
	}
	cfg.Bind, cfg.Port, cfg.AdminAddr = "127.0.0.1", 0, ""
	cfg.RedisHost, cfg.RedisPort = "127.0.0.1", port
	cfg.BackendTimeout = time.Second
	n, err := node.New(cfg, node.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		stopRedis()
		return nil, err
	}
	dmbAddr = n.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan struct{})
	go func() { defer close(ended); _ = n.Run(ctx) }()
	stop = func() { cancel(); <-ended; stopRedis() }
	if err := waitFor(func() bool { return n.Ready(context.Background()) }); err != nil {
		stop()
		return nil, fmt.Errorf("node not ready: %w", err)
	}
	return stop, nil
}

// waitFor polls cond until it holds, for 10 s at most.
func waitFor(cond func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		<-tick.C
	}
	return nil
}
