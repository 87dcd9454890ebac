// Package nodetest starts in-process DMB nodes on real Redis for tests, and
// holds the small helpers every integration test needs: waiting for a
// condition with a deadline, a logger that discards unless DMB_TEST_LOG is
// set, and a buffer safe for concurrent writers.
package nodetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

// Wait is how long any awaited event may take before a test fails.
const Wait = 10 * time.Second

// Eventually polls cond until it holds, failing the test after Wait.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// Logger discards logs unless DMB_TEST_LOG is set, then writes them at
// debug level to standard error.
func Logger() *slog.Logger {
	if os.Getenv("DMB_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Buffer is a bytes.Buffer safe for concurrent writers, for logs and
// subprocess output.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Bytes returns a copy of what was written.
func (s *Buffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *Buffer) String() string { return string(s.Bytes()) }

var nodes atomic.Int32

// Config returns the configuration tests start from: the defaults, on a
// free loopback port of r, with no admin listener, a unique node id and a
// backend timeout of one second.
func Config(t testing.TB, r *redistest.Server) config.Config {
	t.Helper()
	cfg, err := config.Load()
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	cfg.Bind, cfg.Port, cfg.AdminAddr = "127.0.0.1", 0, ""
	if r != nil { // else the caller points the node at its Redis
		cfg.RedisHost, cfg.RedisPort = "127.0.0.1", r.Port()
	}
	cfg.NodeID = fmt.Sprintf("node-%d", nodes.Add(1))
	cfg.BackendTimeout = time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	return cfg
}

// Node is a running in-process node.
type Node struct {
	*node.Node
	ID string
	t  testing.TB

	stop  context.CancelFunc
	ended chan struct{} // closed when Run returned, with err set
	err   error
}

// Start runs a node with cfg and opts, waits until it is ready, and stops
// it when the test ends. A nil opts.Logger means Logger().
func Start(t testing.TB, cfg config.Config, opts node.Options) *Node {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = Logger().With("test", t.Name())
	}
	n, err := node.New(cfg, opts)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &Node{Node: n, ID: cfg.NodeID, t: t, stop: cancel, ended: make(chan struct{})}
	go func() {
		tn.err = n.Run(ctx)
		close(tn.ended)
	}()
	t.Cleanup(func() {
		if err := tn.Stop(); err != nil {
			t.Errorf("node %s stopped with %v", tn.ID, err)
		}
	})
	Eventually(t, "node ready", func() bool { return n.Ready(context.Background()) })
	return tn
}

// Stop shuts the node down gracefully and returns what Run returned.
func (n *Node) Stop() error {
	n.stop()
	return n.Wait()
}

// Wait waits, without stopping it, until the node stops (after a drain)
// and returns what Run returned.
func (n *Node) Wait() error {
	select {
	case <-n.ended:
		return n.err
	case <-time.After(Wait):
		return fmt.Errorf("node %s did not stop", n.ID)
	}
}

// URL is an http:// URL of the node.
func (n *Node) URL(path string) string { return "http://" + n.Addr().String() + path }

// WSURL is the WebSocket URL of a service on the node.
func (n *Node) WSURL(service string) string { return "ws://" + n.Addr().String() + "/ws/" + service }

// Main runs a package's tests the way every DMB integration test package
// does: go-redis's own messages through Logger, and a check that no
// goroutine outlives the tests.
func Main(m *testing.M) {
	redis.SetLogger(node.RedisLogger(Logger()))
	goleak.VerifyTestMain(m)
}

// ReadJSON reads one frame from c, within Wait, as a JSON object.
func ReadJSON(t testing.TB, c *websocket.Conn) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	_, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("frame %q: %v", data, err)
	}
	return f
}
