package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/config"
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
	var session string
	waitFor(t, "demo backend live", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, p.ws("chat"), nil)
		if err != nil {
			return false
		}
		_, first, err := conn.Read(ctx)
		if err != nil {
			return false // 4503 until the demo backend is live
		}
		var f struct{ Session string }
		_ = json.Unmarshal(first, &f)
		c, session = conn, f.Session
		return true
	})
	t.Cleanup(func() { _ = c.CloseNow() })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":{"name":"ann","text":"hello"},"id":1}`)); err != nil {
		t.Fatal(err)
	}
	var sawAck, sawChat, sawEcho bool
	var offset string
	for !(sawAck && sawChat && sawEcho) {
		f := readJSON(t, c)
		data, _ := f["data"].(map[string]any)
		switch {
		case f["event"] == "dmb:ack":
			sawAck = true
		case f["event"] == "dmb:broadcast" && data["kind"] == "chat":
			sawChat = data["text"] == "hello" && data["name"] == "ann"
			offset, _ = f["offset"].(string)
		case f["event"] == "dmb:direct" && data["kind"] == "echo":
			sawEcho = f["reply_to"] == float64(1)
		}
	}
	// The embedded Redis has DMB's function: the demo's lines are
	// recoverable, and a page that dropped gets what it missed.
	if offset == "" || session == "" {
		t.Fatalf("offset %q, session %q: the dev mode's messages are not recoverable", offset, session)
	}
	_ = c.CloseNow()
	other, _, err := websocket.Dial(ctx, p.ws("chat"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.CloseNow()
	readJSON(t, other)
	if err := other.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":{"name":"bob","text":"while ann was away"},"id":1}`)); err != nil {
		t.Fatal(err)
	}
	for f := readJSON(t, other); f["event"] != "dmb:ack"; f = readJSON(t, other) {
	}
	back, _, err := websocket.Dial(ctx, p.ws("chat")+"?resume="+url.QueryEscape(session)+"&offset="+url.QueryEscape(offset), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer back.CloseNow()
	if f := readJSON(t, back); f["resumed"] != true || f["recovered"] != true {
		t.Fatalf("resume in the dev mode: %v", f)
	}
	for {
		f := readJSON(t, back)
		if data, _ := f["data"].(map[string]any); f["event"] == "dmb:broadcast" && data["text"] == "while ann was away" {
			break
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

// runDMB runs dmb to its end and returns its output and exit code.
func runDMB(t *testing.T, args string, env ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	proctest.DieWithTest(cmd)
	cmd.Env = append(os.Environ(), "DMB_TEST_MAIN=1", "DMB_TEST_MAIN_ARGS="+args, "DMB_BIND=127.0.0.1", "DMB_ADMIN_ADDR=")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run dmb: %v\n%s", err, out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// logLines parses dmb's JSON log lines; it fails the test on a line in
// another format.
func logLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("a line not in DMB's JSON log format: %q\nall output:\n%s", l, out)
		}
		lines = append(lines, m)
	}
	return lines
}

// holdPort listens on 127.0.0.1:port for the test, so that dmb finds it
// taken (when another process holds it, it is taken all the same).
func holdPort(t *testing.T, port int) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return // taken by another process: taken all the same
	}
	t.Cleanup(func() { ln.Close() })
}

func TestBadSettingsAreAllReportedAtOnceInDMBsLogFormat(t *testing.T) {
	out, code := runDMB(t, "", "DMB_LOG_FORMAT=json", "DMB_SEND_QUEUE=abc", "DMB_PORT=x", "DMB_ALLOWED_ORIGINS=[")
	if code != 1 {
		t.Fatalf("exit code %d, want 1\n%s", code, out)
	}
	want := map[string]string{
		"DMB_PORT":            "a whole number, such as 8082",
		"DMB_SEND_QUEUE":      "a whole number, such as 1024",
		"DMB_ALLOWED_ORIGINS": "comma-separated host patterns, such as app.example.com,*.example.com",
	}
	got := map[string]bool{}
	var last map[string]any
	for _, l := range logLines(t, out) {
		last = l
		if l["msg"] != "bad setting" {
			continue
		}
		name, _ := l["setting"].(string)
		w, _ := l["want"].(string)
		if !strings.HasPrefix(w, want[name]) || want[name] == "" || l["level"] != "ERROR" {
			t.Errorf("line %v: want %q for %s", l, want[name], name)
		}
		got[name] = true
	}
	if len(got) != len(want) {
		t.Fatalf("bad settings reported: %v, want %d\n%s", got, len(want), out)
	}
	if e, _ := last["err"].(string); !strings.Contains(e, "`dmb -h` lists every setting") {
		t.Fatalf("last line %v, want where to read about settings", last)
	}
}

func TestATakenPortIsReportedWithItsSetting(t *testing.T) {
	port := redistest.FreePort(t)
	holdPort(t, port)
	out, code := runDMB(t, "", "DMB_LOG_FORMAT=json", "DMB_PORT="+strconv.Itoa(port))
	lines := logLines(t, out)
	e, _ := lines[len(lines)-1]["err"].(string)
	want := fmt.Sprintf("DMB_PORT=%d", port)
	if code != 1 || !strings.Contains(e, want) || !strings.Contains(e, "set DMB_PORT to a free port") {
		t.Fatalf("exit %d, last error %q: want %s named and what to do", code, e, want)
	}
}

func TestAnAddressNotOfThisHostIsReportedWithItsSettings(t *testing.T) {
	out, code := runDMB(t, "", "DMB_LOG_FORMAT=json", "DMB_BIND=192.0.2.1", "DMB_PORT=8082") // TEST-NET-1: no host has it
	lines := logLines(t, out)
	e, _ := lines[len(lines)-1]["err"].(string)
	if code != 1 || !strings.Contains(e, `DMB_BIND="192.0.2.1" DMB_PORT=8082`) ||
		!strings.Contains(e, "set DMB_BIND to an address of this host (or empty for every interface) and DMB_PORT to a free port") {
		t.Fatalf("exit %d, last error %q: want DMB_BIND and DMB_PORT named and what to do", code, e)
	}
}

func TestHelpListsEverySetting(t *testing.T) {
	out, code := runDMB(t, "-h")
	if code != 0 {
		t.Fatalf("dmb -h exit code %d", code)
	}
	for _, s := range config.Settings() {
		if !strings.Contains(out, "  "+s.Name+"  default ") {
			t.Errorf("dmb -h does not list %s", s.Name)
		}
	}
	for _, flag := range []string{"-dev", "-version", "-healthcheck"} {
		if !strings.Contains(out, "  "+flag+"\n") {
			t.Errorf("dmb -h does not list %s", flag)
		}
	}
}

// With a Redis of the system on 6379, the walkthrough's redis-cli would talk
// to it, not to DMB's: dev mode says in one warning which port to use.
func TestDevModeSaysWhichRedisToUseWhenTheDefaultPortIsTaken(t *testing.T) {
	holdPort(t, 6379)
	if _, ok := os.LookupEnv("REDIS_PORT"); ok {
		t.Fatal("REDIS_PORT is set in the test's environment: this test needs the default")
	}
	p := startDMB(t, "-dev")
	var warn map[string]any
	for _, l := range logLines(t, p.out.String()) {
		if l["level"] == "WARN" && strings.HasPrefix(l["msg"].(string), "dev mode: port 6379 is taken") {
			warn = l
		}
	}
	if warn == nil {
		t.Fatalf("no warning that 6379 is taken:\n%s", p.out)
	}
	addr, _ := warn["addr"].(string)
	_, port, _ := net.SplitHostPort(addr)
	if msg := warn["msg"].(string); !strings.Contains(msg, "listens on "+addr) || !strings.Contains(msg, "redis-cli -p "+port) {
		t.Fatalf("warning %q does not say where the embedded Redis is (%s)", msg, addr)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// The demo backend registered there: the walkthrough works on it.
	if n, err := rdb.Publish(ctx, "dmb:register", `{"type":"bk_disconnect","bkid":"1"}`).Result(); err != nil || n != 1 {
		t.Fatalf("PUBLISH dmb:register at %s = %d, %v; want DMB's node listening", addr, n, err)
	}
}

func TestDevModeWithATakenREDIS_PORTSaysSo(t *testing.T) {
	port := redistest.FreePort(t)
	holdPort(t, port)
	out, code := runDMB(t, "-dev", "DMB_LOG_FORMAT=json", "DMB_PORT="+strconv.Itoa(redistest.FreePort(t)), "REDIS_PORT="+strconv.Itoa(port))
	lines := logLines(t, out)
	e, _ := lines[len(lines)-1]["err"].(string)
	if code != 1 || !strings.Contains(e, fmt.Sprintf("REDIS_PORT=%d", port)) || !strings.Contains(e, "unset REDIS_PORT to take any") {
		t.Fatalf("exit %d, last error %q: want REDIS_PORT named and what to do", code, e)
	}
}

// Redis down at start: one error with the address and what to check, and
// the subscriptions' retries kept out of the log at info.
func TestRedisDownAtStartIsReportedOnceWithTheAddress(t *testing.T) {
	redisPort := redistest.FreePort(t) // nothing listens there
	port := redistest.FreePort(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	proctest.DieWithTest(cmd)
	cmd.Env = append(os.Environ(), "DMB_TEST_MAIN=1", "DMB_PORT="+strconv.Itoa(port), "DMB_BIND=127.0.0.1",
		"DMB_LOG_FORMAT=json", "DMB_ADMIN_ADDR=", "REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(redisPort))
	out := &nodetest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(redisPort))
	waitFor(t, "redis unreachable in the log", func() bool { return strings.Contains(out.String(), "redis unreachable") })
	var unreachable, retries int
	for _, l := range logLines(t, out.String()) {
		msg, _ := l["msg"].(string)
		switch {
		case strings.HasPrefix(msg, "redis unreachable"):
			unreachable++
			check, _ := l["check"].(string)
			if l["level"] != "ERROR" || l["redis"] != addr || !strings.HasPrefix(check, "nothing listens at "+addr) {
				t.Errorf("line %v: want an error naming %s and what to check", l, addr)
			}
		case msg == "redis subscription failed":
			retries++
		}
	}
	if unreachable != 1 || retries > 2 {
		t.Fatalf("%d redis unreachable lines and %d subscription failures, want 1 and at most one per subscription:\n%s", unreachable, retries, out)
	}
}

// The release in VERSION is the one the binary, the packages and the
// changelog carry.
func TestVersionIsTheSameEverywhere(t *testing.T) {
	b, err := os.ReadFile("VERSION")
	if err != nil {
		t.Fatal(err)
	}
	release := strings.TrimSpace(string(b))
	if out, _ := runDMB(t, "-version"); strings.TrimSpace(out) != release+"-dev" {
		t.Errorf("dmb -version (not stamped) = %q, want %s-dev", out, release)
	}
	for _, f := range []struct{ path, want string }{
		{"clients/js/package.json", `"version": "` + release + `"`},
		{"clients/node/package.json", `"version": "` + release + `"`},
		{"clients/python/pyproject.toml", `version = "` + release + `"`},
		{"clients/python/dmb_backend/__init__.py", `__version__ = "` + release + `"`},
		{"CHANGELOG.md", "\n## " + release + " "},
		{"scripts/build.sh", "$(cat VERSION)"},
	} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), f.want) {
			t.Errorf("%s does not contain %q", f.path, f.want)
		}
	}
}
