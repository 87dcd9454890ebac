package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/internal/redistest"
)

// The tests run the dmb command as a child process: the test binary
// re-executes itself with DMB_TEST_MAIN set, and main runs as it would.
func TestMain(m *testing.M) {
	if os.Getenv("DMB_TEST_MAIN") != "" {
		os.Args = append([]string{"dmb"}, strings.Fields(os.Getenv("DMB_TEST_MAIN_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const wait = 15 * time.Second

// proc is a dmb child process.
type proc struct {
	cmd  *exec.Cmd
	out  *nodetest.Buffer
	done chan struct{}
	port int
}

func startDMB(t *testing.T, args string, env ...string) *proc {
	t.Helper()
	port := redistest.FreePort(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	proctest.DieWithTest(cmd)
	cmd.Env = append(os.Environ(), "DMB_TEST_MAIN=1", "DMB_TEST_MAIN_ARGS="+args,
		"DMB_PORT="+strconv.Itoa(port), "DMB_BIND=127.0.0.1", "DMB_LOG_FORMAT=json", "DMB_ADMIN_ADDR=127.0.0.1:0")
	cmd.Env = append(cmd.Env, env...)
	p := &proc{cmd: cmd, out: &nodetest.Buffer{}, done: make(chan struct{}), port: port}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("dmb output:\n%s", p.out)
		}
	})
	waitFor(t, "dmb ready", func() bool {
		resp, err := http.Get(p.url("/readyz"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

func (p *proc) url(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path) }
func (p *proc) ws(service string) string {
	return fmt.Sprintf("ws://127.0.0.1:%d/ws/%s", p.port, service)
}

var waitFor = nodetest.Eventually

var readJSON = nodetest.ReadJSON

func dial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func TestSIGTERMClosesClientsWith1001TellsBackendsAndExitsZero(t *testing.T) {
	r := redistest.Start(t)
	rdb := r.Client()
	p := startDMB(t, "", "REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(r.Port()), "DMB_SHUTDOWN_TIMEOUT=5s")

	// A backend in the raw protocol: register, listen on the uplink.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	reply := rdb.Subscribe(ctx, "dmb:register:n-term")
	defer reply.Close()
	if _, err := reply.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	rdb.Publish(ctx, "dmb:register", `{"type":"bk_connect","nonce":"n-term","service":"chat"}`)
	msg, err := reply.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ack struct{ Uplink string }
	_ = json.Unmarshal([]byte(msg.Payload), &ack)
	up := rdb.Subscribe(ctx, ack.Uplink)
	defer up.Close()
	if _, err := up.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	c := dial(t, p.ws("chat"))
	if f := readJSON(t, c); f["event"] != "dmb:connected" {
		t.Fatalf("first frame %v", f)
	}
	expectUplink(t, up, "client_connected")

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Read(ctx)
	if code := websocket.CloseStatus(err); code != 1001 {
		t.Fatalf("close status %d (%v), want 1001", code, err)
	}
	if ev := expectUplink(t, up, "client_disconnected"); ev["code"] != float64(1001) {
		t.Fatalf("client_disconnected %v", ev)
	}
	select {
	case <-p.done:
	case <-time.After(wait):
		t.Fatal("dmb did not exit")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %v, over DMB_SHUTDOWN_TIMEOUT", took)
	}
}

func expectUplink(t *testing.T, ps *redis.PubSub, typ string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v", typ, err)
		}
		var ev map[string]any
		_ = json.Unmarshal([]byte(msg.Payload), &ev)
		if ev["type"] == typ {
			return ev
		}
	}
}

func TestDevModeRunsTheDemoOnAnEmbeddedRedis(t *testing.T) {
	redisPort := redistest.FreePort(t)
	p := startDMB(t, "-dev", "REDIS_PORT="+strconv.Itoa(redisPort))

	resp, err := http.Get(p.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "/ws/chat") {
		t.Fatalf("demo page: %d %.200s", resp.StatusCode, page)
	}
	// The embedded Redis listens on loopback, where other backends can
	// reach it.
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(redisPort)), time.Second)
	if err != nil {
		t.Fatalf("embedded redis not on loopback:%d: %v", redisPort, err)
	}
	conn.Close()

	// The demo backend registers by itself; a client chats through it.
	var c *websocket.Conn
	waitFor(t, "demo backend live", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, p.ws("chat"), nil)
		if err != nil {
			return false
		}
		if _, _, err := conn.Read(ctx); err != nil {
			return false // 4503 until the demo backend is live
		}
		c = conn
		return true
	})
	t.Cleanup(func() { _ = c.CloseNow() })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":{"name":"ann","text":"hello"},"id":1}`)); err != nil {
		t.Fatal(err)
	}
	var sawAck, sawChat, sawEcho bool
	for !(sawAck && sawChat && sawEcho) {
		f := readJSON(t, c)
		data, _ := f["data"].(map[string]any)
		switch {
		case f["event"] == "dmb:ack":
			sawAck = true
		case f["event"] == "dmb:broadcast" && data["kind"] == "chat":
			sawChat = data["text"] == "hello" && data["name"] == "ann"
		case f["event"] == "dmb:direct" && data["kind"] == "echo":
			sawEcho = f["reply_to"] == float64(1)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(wait):
		t.Fatal("dmb -dev did not exit")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
