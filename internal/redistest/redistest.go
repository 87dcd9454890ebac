// Package redistest runs real redis-server processes for tests: each on a
// free loopback port, without persistence, killed when the test ends. A test
// can kill one and start it again on the same port to exercise DMB's
// recovery.
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	port int
	args []string
	// conf, when set, is a config file the server starts from in Sentinel
	// mode (a sentinel rewrites its file, so it has one of its own).
	conf string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *bytes.Buffer
}

// Start starts redis-server on a free loopback port and waits until it
// answers. Extra arguments are passed to redis-server.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found (apt-get install redis-server): %v", err)
	}
	s := &Server{t: t, port: FreePort(t), args: args}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Client returns a go-redis client for the server, closed when the test
// ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Server) start() {
	s.t.Helper()
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
	}, s.args...)
	if s.conf != "" {
		args = append([]string{s.conf, "--sentinel", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1"}, s.args...)
	}
	cmd := exec.Command("redis-server", args...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.out = cmd, done, out
	s.mu.Unlock()
	s.waitReady(done)
}

func (s *Server) waitReady(exited chan struct{}) {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("redis-server on port %d exited: %s", s.port, s.output())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d not ready: %v", s.port, err)
		}
	}
}

func (s *Server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// Kill stops the server with SIGKILL and waits for it to exit: connections
// drop as in a crash.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts the server again on the same port, empty.
func (s *Server) Restart() {
	s.t.Helper()
	s.start()
}

// String describes the server in failure messages.
func (s *Server) String() string { return fmt.Sprintf("redis-server :%d", s.port) }
