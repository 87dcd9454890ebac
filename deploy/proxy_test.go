// Package deploy_test runs the deployment configurations in deploy/ for
// real: Debian's nginx with deploy/nginx/dmb.conf, and Debian's Apache
// with deploy/apache/dmb.conf, in front of DMB nodes, over TLS, with a
// WebSocket client on wss:// and the HTTP fallback's (sse_test.go).
package deploy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
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
	"github.com/dmb-broker/dmb/demo"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/internal/testcert"
	"github.com/dmb-broker/dmb/node"
)

const wait = 10 * time.Second

// clientAddr is the loopback address the browser side connects from, so
// that it differs from the proxy's own 127.0.0.1.
const clientAddr = "127.0.0.23"

var (
	quiet      = nodetest.Logger
	eventually = nodetest.Eventually
)

// startNode runs a DMB node that trusts only the proxy's address.
func startNode(t *testing.T, r *redistest.Server, id string) *nodetest.Node {
	t.Helper()
	cfg := nodetest.Config(t, r)
	cfg.NodeID = id
	cfg.TrustedProxies = []string{"127.0.0.1/32"}
	return nodetest.Start(t, cfg, node.Options{})
}

// proxy is a TLS proxy running one of deploy/'s configurations.
type proxy struct {
	https, http int
}

// proxyKind starts one kind of proxy in front of DMB (one node or more)
// and the page.
type proxyKind struct {
	name  string
	start func(t *testing.T, dmbAddrs []string, pageAddr string, cert testcert.Cert) proxy
}

var proxies = []proxyKind{{"nginx", startNginx}, {"apache", startApache}}

// templated returns a deploy/ config file with the given replacements,
// each of which must be found.
func templated(t *testing.T, path string, repl map[string]string) string {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(src)
	for from, to := range repl {
		if !strings.Contains(conf, from) {
			t.Fatalf("%s no longer has %q", path, from)
		}
		conf = strings.ReplaceAll(conf, from, to)
	}
	return conf
}

// runServer starts a proxy process in its own process group, logging to a
// file, and waits for its TLS port. The proxies run as one process
// (nginx's master_process off, Apache's -X), so that the kernel's kill of
// it when the test process dies (proctest.DieWithTest) leaves no worker
// serving the port.
func runServer(t *testing.T, dir string, port int, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// Output to a file: the workers inherit it, and a pipe would keep Wait
	// waiting for them too.
	logFile, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	proctest.DieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	output := func() string {
		b, _ := os.ReadFile(logFile.Name())
		e, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return string(b) + string(e)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), output())
		}
	})
	eventually(t, filepath.Base(bin)+" listening", func() bool {
		select {
		case <-exited:
			t.Fatalf("%s exited: %s", bin, output())
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

func findBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	if bin, err := exec.LookPath(name); err == nil {
		return bin
	}
	bin := "/usr/sbin/" + name
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s not installed (apt-get install %s): %v", name, pkg, err)
	}
	return bin
}

func tempDir(t *testing.T) string {
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o755) // workers run as another user
	return dir
}

func writeFile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), fs.FileMode(0o644)); err != nil {
		t.Fatal(err)
	}
}

// startNginx runs Debian's nginx with deploy/nginx/dmb.conf, its listen
// ports, certificate paths and upstreams (deploy/nginx/upstreams.conf)
// set for the test. Its http block compresses event streams and ignores
// DMB's X-Accel-Buffering, so that only dmb.conf keeps the HTTP fallback
// from being compressed or buffered.
func startNginx(t *testing.T, dmbAddrs []string, pageAddr string, cert testcert.Cert) proxy {
	t.Helper()
	bin := findBinary(t, "nginx", "nginx")
	px := proxy{https: redistest.FreePort(t), http: redistest.FreePort(t)}
	conf := templated(t, "nginx/dmb.conf", map[string]string{
		"listen 443 ssl;":           fmt.Sprintf("listen 127.0.0.1:%d ssl;", px.https),
		"listen 80;":                fmt.Sprintf("listen 127.0.0.1:%d;", px.http),
		"/etc/nginx/certs/tls.crt;": cert.CertFile + ";",
		"/etc/nginx/certs/tls.key;": cert.KeyFile + ";",
	})
	dir := tempDir(t)
	writeFile(t, dir, "dmb.conf", conf)
	writeFile(t, dir, "upstreams.conf", templated(t, "nginx/upstreams.conf", map[string]string{
		"server 127.0.0.1:8082;": "server " + strings.Join(dmbAddrs, ";\n    server ") + ";",
		"server 127.0.0.1:8090;": "server " + pageAddr + ";",
	}))
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	writeFile(t, dir, "nginx.conf", fmt.Sprintf(`%s
daemon off;
master_process off;
pid %[2]s/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    gzip on;
    gzip_types text/event-stream;
    gzip_min_length 1;
    proxy_ignore_headers X-Accel-Buffering;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[2]s/upstreams.conf;
    include %[2]s/dmb.conf;
}
`, user, dir))
	runServer(t, dir, px.https, bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", "stderr")
	return px
}

// startApache runs Debian's Apache httpd with deploy/apache/dmb.conf, its
// virtual hosts, certificate paths and backends set for the test. Its
// server config compresses event streams, which dmb.conf must not let
// happen to the HTTP fallback.
func startApache(t *testing.T, dmbAddrs []string, pageAddr string, cert testcert.Cert) proxy {
	t.Helper()
	if len(dmbAddrs) != 1 {
		t.Fatalf("apache/dmb.conf proxies to one node, not %d", len(dmbAddrs))
	}
	dmbAddr := dmbAddrs[0]
	bin := findBinary(t, "apache2", "apache2")
	px := proxy{https: redistest.FreePort(t), http: redistest.FreePort(t)}
	conf := templated(t, "apache/dmb.conf", map[string]string{
		"<VirtualHost *:80>":       fmt.Sprintf("<VirtualHost 127.0.0.1:%d>", px.http),
		"<VirtualHost *:443>":      fmt.Sprintf("<VirtualHost 127.0.0.1:%d>", px.https),
		"/etc/ssl/certs/dmb.crt":   cert.CertFile,
		"/etc/ssl/private/dmb.key": cert.KeyFile,
		"http://127.0.0.1:8082/":   "http://" + dmbAddr + "/",
		`"http://127.0.0.1:8090"`:  `"http://` + pageAddr + `"`,
		"ws://127.0.0.1:8082/ws/":  "ws://" + dmbAddr + "/ws/",
	})
	dir := tempDir(t)
	writeFile(t, dir, "dmb.conf", conf)
	mods := "/usr/lib/apache2/modules/"
	var load strings.Builder
	for _, m := range []string{"mpm_event", "authz_core", "alias", "headers", "socache_shmcb", "ssl", "proxy", "proxy_http", "proxy_wstunnel", "setenvif", "filter", "deflate"} {
		fmt.Fprintf(&load, "LoadModule %s_module %smod_%s.so\n", m, mods, m)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "User www-data\nGroup www-data\n"
	}
	writeFile(t, dir, "httpd.conf", fmt.Sprintf(`%s%s
ServerName localhost
ServerRoot %[3]s
PidFile %[3]s/httpd.pid
DefaultRuntimeDir %[3]s
ErrorLog %[3]s/error.log
LogLevel warn
Listen 127.0.0.1:%[4]d
Listen 127.0.0.1:%[5]d
AddOutputFilterByType DEFLATE text/event-stream
Include %[3]s/dmb.conf
`, load.String(), user, dir, px.https, px.http))
	runServer(t, dir, px.https, bin, "-f", filepath.Join(dir, "httpd.conf"), "-DFOREGROUND", "-X")
	return px
}

// clientTransport connects from clientAddr and trusts the test certificate.
func clientTransport(t *testing.T, cert testcert.Cert) *http.Transport {
	return clientTransportFrom(t, cert, clientAddr)
}

// clientTransportFrom connects from addr, a loopback address.
func clientTransportFrom(t *testing.T, cert testcert.Cert, addr string) *http.Transport {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}, Timeout: wait}
	tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: cert.ClientConfig()}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

type env struct {
	t      *testing.T
	cert   testcert.Cert
	px     proxy
	node   *nodetest.Node   // the first of nodes
	nodes  []*nodetest.Node // behind the proxy, on one Redis
	events chan backend.Event
	b      *backend.Backend
}

func setup(t *testing.T, kind proxyKind) *env { return setupNodes(t, kind, 1) }

// setupNodes runs count DMB nodes behind the proxy.
func setupNodes(t *testing.T, kind proxyKind, count int) *env {
	r := redistest.Start(t)
	e := &env{t: t, cert: testcert.New(t), events: make(chan backend.Event, 1000)}
	var addrs []string
	for i := range count {
		id := "proxied"
		if i > 0 {
			id += strconv.Itoa(i + 1)
		}
		n := startNode(t, r, id)
		e.nodes = append(e.nodes, n)
		addrs = append(addrs, n.Addr().String())
	}
	e.node = e.nodes[0]
	page := httptest.NewServer(demo.Page())
	t.Cleanup(page.Close)
	e.px = kind.start(t, addrs, strings.TrimPrefix(page.URL, "http://"), e.cert)

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

var read = nodetest.ReadJSON

func TestMain(m *testing.M) { nodetest.Main(m) }

func TestWSSThroughTheProxyCarriesTheWholeContract(t *testing.T) {
	for _, kind := range proxies {
		t.Run(kind.name, func(t *testing.T) { testWholeContract(t, setup(t, kind)) })
	}
}

func testWholeContract(t *testing.T, e *env) {
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
	for _, kind := range proxies {
		t.Run(kind.name, func(t *testing.T) { testNoSpoofing(t, setup(t, kind)) })
	}
}

func testNoSpoofing(t *testing.T, e *env) {
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

func TestTheProxyPassesOnlyTheWebSocketAndThePage(t *testing.T) {
	for _, kind := range proxies {
		t.Run(kind.name, func(t *testing.T) { testOnlyWebSocketAndPage(t, setup(t, kind)) })
	}
}

func testOnlyWebSocketAndPage(t *testing.T, e *env) {
	tr := clientTransport(t, e.cert)
	tr.TLSClientConfig = &tls.Config{RootCAs: e.cert.Pool, MinVersion: tls.VersionTLS12}
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	base := "https://127.0.0.1:" + strconv.Itoa(e.px.https)
	for _, path := range []string{"/", "/dmb.js", "/metrics", "/healthz", "/readyz", "/stats"} {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The page and the browser client are served; nothing else of DMB
		// is (404 from nginx, 403 from Apache).
		public := path == "/" || path == "/dmb.js"
		if ok := resp.StatusCode == 200; ok != public || (!public && resp.StatusCode != 404 && resp.StatusCode != 403) {
			t.Errorf("GET %s = %d", path, resp.StatusCode)
		}
		if path == "/" && !strings.Contains(string(body), `from "/dmb.js"`) {
			t.Errorf("page is not the demo page on dmb.js")
		}
		if path == "/dmb.js" && (!strings.Contains(string(body), "export class DMB") || resp.Header.Get("Cache-Control") == "") {
			t.Errorf("/dmb.js through the proxy: %.80s, Cache-Control %q", body, resp.Header.Get("Cache-Control"))
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
