// Package redistest runs real redis-server processes for tests: each on a
// free loopback port, without persistence, killed when the test ends. A test
// can kill one and start it again on the same port to exercise DMB's
// recovery.
package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/ports"
	"github.com/dmb-broker/dmb/internal/proctest"
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
	// dir is the working directory, the server's own: a replica writes the
	// RDB it syncs from its master there.
	dir string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *bytes.Buffer
}

// Start starts redis-server on a free loopback port and waits until it
// answers. Extra arguments are passed to redis-server.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return startNew(t, func() *Server { return &Server{t: t, port: FreePort(t), args: args} })
}

// startAttempts bounds how often startNew finds new ports.
const startAttempts = 5

// startNew starts the server newServer describes and stops it when the test
// ends. A port found free can still be taken by another process before
// redis-server binds it; then it asks newServer again, for ports found
// anew.
func startNew(t testing.TB, newServer func() *Server) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found (apt-get install redis-server): %v", err)
	}
	for attempt := 1; ; attempt++ {
		s := newServer()
		err := s.launch()
		if err == nil {
			t.Cleanup(s.Kill)
			return s
		}
		if !errors.Is(err, errPortTaken) || attempt == startAttempts {
			t.Fatal(err)
		}
	}
}

// FreePort returns a loopback TCP port that was free a moment ago. It is
// below the kernel's ephemeral range: a port in that range can go to any
// outgoing connection on the machine, between this call and the bind of
// the server it is for, or between a Kill and a Restart on the same port.
func FreePort(t testing.TB) int {
	t.Helper()
	if lo, hi := fixedPorts(); hi > lo {
		for range 100 {
			p := lo + rand.IntN(hi-lo)
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err == nil {
				_ = ln.Close()
				return p
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fixedPorts is the range [lo, hi) of ports that FreePort picks from:
// from 20000 to the start of the kernel's ephemeral range.
func fixedPorts() (lo, hi int) {
	lo, hi = 20000, 32768 // Linux's default ephemeral range starts at 32768
	if first, _, ok := ports.Ephemeral(); ok {
		hi = first
	}
	return lo, hi
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

// errPortTaken is a server's failure to bind its port, or its cluster bus
// port, because another process has it.
var errPortTaken = errors.New("port taken by another process")

// launch runs redis-server and waits until it answers; on failure the
// process is gone.
func (s *Server) launch() error {
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
	}, s.args...)
	if s.conf != "" {
		args = append([]string{s.conf, "--sentinel", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1"}, s.args...)
	}
	if s.dir == "" {
		s.dir = s.t.TempDir()
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = s.dir
	proctest.DieWithTest(cmd)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.out = cmd, done, out
	s.mu.Unlock()
	if err := s.waitReady(cmd.Process.Pid, done); err != nil {
		s.Kill()
		return err
	}
	return nil
}

// waitReady waits until the server with process id pid answers on the
// port: an answer from another process on it does not count.
func (s *Server) waitReady(pid int, exited chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := s.answers(pid)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			out := s.output()
			if strings.Contains(out, "Address already in use") {
				return fmt.Errorf("redis-server on port %d: %w: %s", s.port, errPortTaken, out)
			}
			return fmt.Errorf("redis-server on port %d exited: %s", s.port, out)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on port %d not ready: %w", s.port, err)
		}
	}
}

// answers returns nil when the process pid answers on the server's port.
// Each try has a client of its own: a go-redis pool whose dials keep
// failing starts redialling in the background, at its own pace.
func (s *Server) answers(pid int) error {
	// The timeouts bound the try: go-redis's connection set-up does not
	// follow the context's deadline.
	const try = 200 * time.Millisecond
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1,
		DialTimeout: try, ReadTimeout: try, WriteTimeout: try})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), try)
	defer cancel()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "process_id:"+strconv.Itoa(pid)+"\r\n") {
		return fmt.Errorf("another process answers on port %d", s.port)
	}
	return nil
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
	if err := s.launch(); err != nil {
		s.t.Fatalf("restart: %v", err)
	}
}

// String describes the server in failure messages.
func (s *Server) String() string { return fmt.Sprintf("redis-server :%d", s.port) }
