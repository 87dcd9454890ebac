// Package deploy_test runs the deployment configurations in deploy/ for
// real: Debian's nginx with deploy/nginx/dmb.conf in front of a DMB node,
// over TLS, with a WebSocket client on wss://.
package deploy_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/demo"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/internal/testcert"
	"github.com/dmb-broker/dmb/node"
)

const wait = 10 * time.Second

// clientAddr is the loopback address the browser side connects from, so
// that it differs from the proxy's own 127.0.0.1.
const clientAddr = "127.0.0.23"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// startNode runs a DMB node that trusts only the proxy's address.
func startNode(t *testing.T, r *redistest.Server) *node.Node {
	t.Helper()
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bind, cfg.Port, cfg.AdminAddr = "127.0.0.1", 0, ""
	cfg.RedisHost, cfg.RedisPort = "127.0.0.1", r.Port()
	cfg.NodeID = "proxied"
	cfg.TrustedProxies = []string{"127.0.0.1/32"}
	n, err := node.New(cfg, node.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "node ready", func() bool { return n.Ready(context.Background()) })
	return n
}

// nginx runs Debian's nginx with deploy/nginx/dmb.conf, its listen ports,
// certificate paths and upstreams set for the test.
type nginx struct {
	https, http int
}

func startNginx(t *testing.T, dmbAddr, pageAddr string, cert testcert.Cert) nginx {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("nginx not installed (apt-get install nginx): %v", err)
		}
	}
	src, err := os.ReadFile("nginx/dmb.conf")
	if err != nil {
		t.Fatal(err)
	}
	px := nginx{https: redistest.FreePort(t), http: redistest.FreePort(t)}
	conf := string(src)
	for from, to := range map[string]string{
		"listen 443 ssl;":           fmt.Sprintf("listen 127.0.0.1:%d ssl;", px.https),
		"listen 80;":                fmt.Sprintf("listen 127.0.0.1:%d;", px.http),
		"/etc/nginx/certs/tls.crt;": cert.CertFile + ";",
		"/etc/nginx/certs/tls.key;": cert.KeyFile + ";",
	} {
		if !strings.Contains(conf, from) {
			t.Fatalf("deploy/nginx/dmb.conf no longer has %q", from)
		}
		conf = strings.ReplaceAll(conf, from, to)
	}
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o755)
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), fs.FileMode(0o644)); err != nil {
			t.Fatal(err)
		}
	}
	write("dmb.conf", conf)
	write("upstreams.conf", fmt.Sprintf("upstream dmb { server %s; }\nupstream dmb_page { server %s; }\n", dmbAddr, pageAddr))
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	write("nginx.conf", fmt.Sprintf(`%s
daemon off;
worker_processes 1;
pid %[2]s/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[2]s/upstreams.conf;
    include %[2]s/dmb.conf;
}
`, user, dir))
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", "stderr")
	// Output to a file: nginx's worker inherits it, and a pipe would keep
	// Wait waiting for the worker too.
	logFile, err := os.Create(filepath.Join(dir, "nginx.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so that the master and its worker stop together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	output := func() string {
		b, _ := os.ReadFile(logFile.Name())
		return string(b)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("nginx output:\n%s", output())
		}
	})
	eventually(t, "nginx listening", func() bool {
		select {
		case <-exited:
			t.Fatalf("nginx exited: %s", output())
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", px.https), 100*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return px
}

// clientTransport connects from clientAddr and trusts the test certificate.
func clientTransport(t *testing.T, cert testcert.Cert) *http.Transport {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientAddr)}, Timeout: wait}
	tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: cert.ClientConfig()}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

type env struct {
	t      *testing.T
	cert   testcert.Cert
	px     nginx
	node   *node.Node
	events chan backend.Event
	b      *backend.Backend
}

func setup(t *testing.T) *env {
	r := redistest.Start(t)
	n := startNode(t, r)
	page := httptest.NewServer(demo.Page())
	t.Cleanup(page.Close)
	cert := testcert.New(t)
	e := &env{t: t, cert: cert, node: n, events: make(chan backend.Event, 1000)}
	e.px = startNginx(t, n.Addr().String(), strings.TrimPrefix(page.URL, "http://"), cert)

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e.b = backend.New(rdb, "chat", backend.Options{Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.b.Run(ctx, func(_ context.Context, ev backend.Event) { e.events <- ev })
	}()
	t.Cleanup(func() { cancel(); <-done })
	<-e.b.Ready()
	return e
}

func (e *env) next(typ, cid string) backend.Event {
	e.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case ev := <-e.events:
			if ev.Type == typ && (cid == "" || ev.CID == cid) {
				return ev
			}
		case <-timeout:
			e.t.Fatalf("no %s event", typ)
		}
	}
}

// dial connects a client to url and returns it with its cid.
func (e *env) dial(url string, header http.Header, tr *http.Transport) (*websocket.Conn, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}, HTTPHeader: header})
	if err != nil {
		e.t.Fatalf("dial %s: %v", url, err)
	}
	e.t.Cleanup(func() { _ = c.CloseNow() })
	f := read(e.t, c)
	if f["event"] != "dmb:connected" {
		e.t.Fatalf("first frame %v", f)
	}
	return c, f["cid"].(string)
}

func read(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
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

func TestWSSThroughNginxCarriesTheWholeContract(t *testing.T) {
	e := setup(t)
	wss := "wss://127.0.0.1:" + strconv.Itoa(e.px.https) + "/ws/chat"
	origin := http.Header{"Origin": {"https://127.0.0.1:" + strconv.Itoa(e.px.https)}}
	c, cid := e.dial(wss, origin, clientTransport(t, e.cert))

	// remote is the address nginx saw and forwarded, not the proxy's.
	if ev := e.next("client_connected", cid); ev.Remote != clientAddr {
		t.Fatalf("remote = %q, want %s", ev.Remote, clientAddr)
	}
	ctx := context.Background()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":{"text":"hi"},"id":1}`)); err != nil {
		t.Fatal(err)
	}
	if f := read(t, c); f["event"] != "dmb:ack" || f["id"] != float64(1) {
		t.Fatalf("answer %v", f)
	}
	if ev := e.next("message", cid); string(ev.Data) != `{"text":"hi"}` {
		t.Fatalf("message %+v", ev)
	}
	if err := e.b.Broadcast(ctx, "to all"); err != nil {
		t.Fatal(err)
	}
	if f := read(t, c); f["event"] != "dmb:broadcast" || f["data"] != "to all" {
		t.Fatalf("broadcast %v", f)
	}
	if err := e.b.Direct(ctx, cid, "to you", 1); err != nil {
		t.Fatal(err)
	}
	if f := read(t, c); f["event"] != "dmb:direct" || f["data"] != "to you" || f["reply_to"] != float64(1) {
		t.Fatalf("direct %v", f)
	}
}

func TestXForwardedForCannotBeSpoofed(t *testing.T) {
	e := setup(t)
	forged := http.Header{"X-Forwarded-For": {"6.6.6.6"}, "X-Real-Ip": {"6.6.6.7"}}
	// Through the proxy: nginx replaces the header with what it saw.
	_, cid := e.dial("wss://127.0.0.1:"+strconv.Itoa(e.px.https)+"/ws/chat", forged, clientTransport(t, e.cert))
	if ev := e.next("client_connected", cid); ev.Remote != clientAddr {
		t.Fatalf("through nginx: remote %q, want %s", ev.Remote, clientAddr)
	}
	// Straight to DMB from an untrusted address: the headers are ignored.
	_, cid = e.dial("ws://"+e.node.Addr().String()+"/ws/chat", forged, clientTransport(t, e.cert))
	if ev := e.next("client_connected", cid); ev.Remote != clientAddr {
		t.Fatalf("direct: remote %q, want %s", ev.Remote, clientAddr)
	}
}

func TestNginxProxiesOnlyTheWebSocketAndThePage(t *testing.T) {
	e := setup(t)
	tr := clientTransport(t, e.cert)
	tr.TLSClientConfig = &tls.Config{RootCAs: e.cert.Pool, MinVersion: tls.VersionTLS12}
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	base := "https://127.0.0.1:" + strconv.Itoa(e.px.https)
	for path, want := range map[string]int{"/": 200, "/metrics": 404, "/healthz": 404, "/readyz": 404, "/dmb.js": 404} {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
		if path == "/" && !strings.Contains(string(body), "/ws/chat") {
			t.Errorf("page is not the demo page")
		}
	}
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(e.px.http) + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || !strings.HasPrefix(resp.Header.Get("Location"), "https://") {
		t.Fatalf("plain http: %d %s, want a redirect to https", resp.StatusCode, resp.Header.Get("Location"))
	}
}
