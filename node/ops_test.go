package node_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/testcert"
	"github.com/dmb-broker/dmb/node"
)

func TestNativeTLSServesWSS(t *testing.T) {
	e := newEnv(t)
	cert := testcert.New(t)
	n := e.startNode(func(c *config.Config) { c.TLSCert, c.TLSKey = cert.CertFile, cert.KeyFile })
	b := e.startBackend("chat")
	tr := &http.Transport{TLSClientConfig: cert.ClientConfig()}
	defer tr.CloseIdleConnections()
	httpClient := &http.Client{Transport: tr}
	ctx := e.ctx()
	conn, _, err := websocket.Dial(ctx, "wss://"+n.Addr().String()+"/ws/chat", &websocket.DialOptions{HTTPClient: httpClient})
	if err != nil {
		t.Fatalf("dial wss: %v", err)
	}
	defer conn.CloseNow()
	if _, data, err := conn.Read(ctx); err != nil || !strings.Contains(string(data), "dmb:connected") {
		t.Fatalf("first frame %s, %v", data, err)
	}
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":1,"id":1}`)); err != nil {
		t.Fatal(err)
	}
	// Many frames at once go out coalesced under TLS; all must arrive intact.
	for range 300 {
		b.publish(t, `{"type":"broadcast","data":"over tls"}`)
	}
	got := 0
	for got < 300 {
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read after %d broadcasts: %v", got, err)
		}
		if strings.Contains(string(data), "over tls") {
			got++
		}
	}
	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + n.Addr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain http answered on the TLS port")
		}
	}
}

// admin calls the admin listener as an operator's tool does: a body, when
// there is one, is JSON.
func (n *testNode) admin(method, path, body string) (int, string) {
	n.t.Helper()
	h := http.Header{}
	if body != "" {
		h.Set("Content-Type", "application/json")
	}
	return n.adminWith(method, path, body, h)
}

// adminWith calls the admin listener with the given headers; a "Host"
// header sets the request's Host.
func (n *testNode) adminWith(method, path, body string, h http.Header) (int, string) {
	n.t.Helper()
	req, _ := http.NewRequest(method, "http://"+n.AdminAddr().String()+path, strings.NewReader(body))
	req.Close = true // no idle connection outlives the test
	for k, v := range h {
		req.Header[k] = v
	}
	if host := h.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminStatsShowClientsBackendsAndQueues(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	connect(t, n, "chat").welcome()
	connect(t, n, "chat").welcome()
	code, body := n.admin("GET", "/stats", "")
	var st node.AdminStats
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("stats %d %v: %s", code, err, body)
	}
	if st.Node != n.id || !st.Ready || st.Clients.Clients != 2 || st.Clients.ByService["chat"] != 2 || st.Clients.QueueLimit != 1024 {
		t.Fatalf("stats = %+v", st)
	}
	if bk := st.Backends["chat"]; len(bk.Live) != 1 || bk.Live[0] != b.BKID() {
		t.Fatalf("backends = %+v", st.Backends)
	}
	// The admin endpoints are not on the public port.
	if code, _ := get(t, n.url("/stats")); code != http.StatusNotFound {
		t.Fatalf("public /stats = %d", code)
	}
}

func TestAdminChangesTheLogLevelAtRunTime(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	if _, body := n.admin("GET", "/loglevel", ""); strings.TrimSpace(body) != "info" {
		t.Fatalf("level = %q", body)
	}
	if code, _ := n.admin("PUT", "/loglevel", `{"level":"debug"}`); code != 200 {
		t.Fatalf("set level: %d", code)
	}
	if _, body := n.admin("GET", "/loglevel", ""); strings.TrimSpace(body) != "debug" {
		t.Fatalf("level after set = %q", body)
	}
	if code, _ := n.admin("PUT", "/loglevel", `{"level":"chatty"}`); code != 400 {
		t.Fatalf("bad level accepted: %d", code)
	}
}

func TestAdminDisconnectsAClient(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	if code, _ := n.admin("POST", "/clients/"+c.cid+"/disconnect", `{"code":4000,"reason":"bye"}`); code != 202 {
		t.Fatalf("disconnect: %d", code)
	}
	if code, reason := c.closed(); code != 4000 || reason != "bye" {
		t.Fatalf("close %d %q", code, reason)
	}
	if ev := b.next(ofTypeCID("client_disconnected", c.cid)); ev.Code != 4000 {
		t.Fatalf("client_disconnected %+v", ev)
	}
	if code, _ := n.admin("POST", "/clients/nosuch/disconnect", `{}`); code != 404 {
		t.Fatalf("unknown cid: %d", code)
	}
	if code, _ := n.admin("POST", "/clients/x/disconnect", `{"code":1006}`); code != 400 {
		t.Fatalf("close code 1006 accepted: %d", code)
	}
}

func TestAdminTokenIsRequiredWhenSet(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.AdminToken = "s3cret" })
	if code, _ := n.admin("GET", "/stats", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	req, _ := http.NewRequest("GET", "http://"+n.AdminAddr().String()+"/stats", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("with token: %d", resp.StatusCode)
	}
}

func TestAdminRefusesWhatAWebPageCanSend(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.AdminHosts = []string{"admin.internal"} })
	port := n.AdminAddr().(*net.TCPAddr).Port
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, tc := range []struct {
		name   string
		method string
		body   string
		header http.Header
		want   int
	}{
		{"a cross-site form", "POST", "x=1", hdr("Origin", "http://evil.example", "Content-Type", "application/x-www-form-urlencoded"), http.StatusForbidden},
		{"a cross-site text/plain post", "POST", `{}`, hdr("Origin", "http://evil.example", "Content-Type", "text/plain"), http.StatusForbidden},
		{"a cross-site fetch with JSON", "POST", `{}`, hdr("Origin", "http://evil.example", "Content-Type", "application/json"), http.StatusForbidden},
		{"another port of localhost", "POST", `{}`, hdr("Origin", "http://localhost:3000", "Content-Type", "application/json"), http.StatusForbidden},
		{"Sec-Fetch-Site cross-site", "POST", `{}`, hdr("Sec-Fetch-Site", "cross-site", "Content-Type", "application/json"), http.StatusForbidden},
		{"a re-bound name", "POST", `{}`, hdr("Host", fmt.Sprintf("evil.example:%d", port), "Content-Type", "application/json"), http.StatusForbidden},
		{"a re-bound name reading stats", "GET", "", hdr("Host", "evil.example"), http.StatusForbidden},
		{"text/plain without an origin", "POST", `{}`, hdr("Content-Type", "text/plain"), http.StatusUnsupportedMediaType},
		{"no body type", "POST", `{}`, hdr(), http.StatusUnsupportedMediaType},
		{"a body that is not an object", "POST", `drain`, hdr("Content-Type", "application/json"), http.StatusBadRequest},
		{"drain as GET", "GET", "", hdr(), http.StatusMethodNotAllowed},
	} {
		path := "/drain"
		if tc.name == "a re-bound name reading stats" {
			path = "/stats"
		}
		if code, body := n.adminWith(tc.method, path, tc.body, tc.header); code != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.name, code, body, tc.want)
		}
	}
	var st node.AdminStats
	for _, host := range []string{"localhost", fmt.Sprintf("127.0.0.1:%d", port), "[::1]:1", "ADMIN.internal:80"} {
		code, body := n.adminWith("GET", "/stats", "", hdr("Host", host))
		if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
			t.Fatalf("Host %s: %d %s", host, code, body)
		}
	}
	if st.Draining {
		t.Fatal("a refused drain drained the node")
	}
	// Five refused for their origin or Sec-Fetch-Site, two for their host.
	for reason, want := range map[string]float64{"origin": 5, "host": 2} {
		if got := n.metric(`dmb_admin_refused_total{reason="` + reason + `"}`); got != want {
			t.Errorf("dmb_admin_refused_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	// The listener's own origin, as a tab opened on it would send.
	origin := fmt.Sprintf("http://127.0.0.1:%d", port)
	if code, _ := n.adminWith("PUT", "/loglevel", `{"level":"warn"}`, hdr("Origin", origin, "Content-Type", "application/json; charset=utf-8")); code != 200 {
		t.Fatalf("same-origin call: %d", code)
	}
}

func TestAdminServesProfilesOnlyWithTheToken(t *testing.T) {
	e := newEnv(t)
	open := e.startNode()
	if code, _ := open.admin("GET", "/debug/pprof/", ""); code != http.StatusNotFound {
		t.Fatalf("pprof without DMB_ADMIN_TOKEN: %d, want 404", code)
	}
	locked := e.startNode(func(c *config.Config) { c.AdminToken = "s3cret" })
	if code, _ := locked.admin("GET", "/debug/pprof/", ""); code != http.StatusUnauthorized {
		t.Fatalf("pprof without the token: %d, want 401", code)
	}
	code, body := locked.adminWith("GET", "/debug/pprof/", "", http.Header{"Authorization": {"Bearer s3cret"}})
	if code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof with the token: %d", code)
	}
}

func TestAdminDrainMovesClientsAwayAndStopsTheNode(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	if code, _ := n.admin("POST", "/drain", `{}`); code != 202 {
		t.Fatalf("drain: %d", code)
	}
	if code, _ := c.closed(); code != 1001 {
		t.Fatalf("close %d, want 1001 so the client reconnects elsewhere", code)
	}
	if err := n.Wait(); err != nil {
		t.Fatalf("drained node: %v", err)
	}
}

func TestMetricsWorthGraphingExistAndMove(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	before := n.metric(`dmb_connects_total{service="chat"}`)
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:message","data":1,"id":1}`)
	c.nextEvent("dmb:ack")
	b.publish(t, `{"type":"broadcast","data":1}`)
	c.nextEvent("dmb:broadcast")
	refused(t, n.wsURL("nosuch"), nil)
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
	b.next(ofTypeCID("client_disconnected", c.cid))
	checks := []struct {
		series string
		min    float64
	}{
		{`dmb_connects_total{service="chat"}`, before + 1},
		{`dmb_disconnects_total{code="1000"}`, 1},
		{`dmb_disconnects_total{code="4004"}`, 1},
		{`dmb_messages_in_total{kind="message"}`, 1},
		{`dmb_messages_out_total{kind="message"}`, 1},
		{`dmb_deliveries_total`, 1},
		{`dmb_write_batch_frames_count`, 1},
		{`dmb_uplink_publish_seconds_count`, 1},
		{`dmb_backends_live`, 1},
		{`dmb_redis_subscription_up_total{subscription="downlink"}`, 1},
	}
	for _, ch := range checks {
		if got := n.metric(ch.series); got < ch.min {
			t.Errorf("%s = %v, want at least %v", ch.series, got, ch.min)
		}
	}
	_, body := get(t, n.url("/metrics"))
	if !strings.Contains(body, "dmb_send_queue_frames ") {
		t.Errorf("dmb_send_queue_frames missing")
	}
}

func TestGrafanaDashboardUsesOnlyExportedSeries(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
	c.closed()
	var exported string
	eventually(t, "the disconnect counted", func() bool {
		_, exported = get(t, n.url("/metrics"))
		return strings.Contains(exported, "# TYPE dmb_disconnects_total ")
	})
	dash, err := os.ReadFile("../deploy/grafana/dmb-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(dash) {
		t.Fatal("dashboard is not JSON")
	}
	used := regexp.MustCompile(`\b(dmb|go|process)_[a-z_]+`).FindAllString(string(dash), -1)
	if len(used) < 10 {
		t.Fatalf("dashboard uses only %v", used)
	}
	for _, name := range used {
		base := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if !strings.Contains(exported, "# TYPE "+base+" ") {
			t.Errorf("dashboard uses %s, which the node does not export", name)
		}
	}
}

// logLines parses a buffer of JSON log lines.
func logLines(buf *nodetest.Buffer) []map[string]any {
	var out []map[string]any
	for _, l := range bytes.Split(buf.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func TestLogsHaveOneLinePerLifecycleEventAndNonePerMessage(t *testing.T) {
	e := newEnv(t)
	var buf nodetest.Buffer
	n := e.startNodeLogging(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	for i := range 50 {
		c.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
		b.publish(t, `{"type":"broadcast","data":1}`)
	}
	for range 50 {
		c.nextEvent("dmb:ack")
	}
	_ = c.conn.Close(websocket.StatusNormalClosure, "bye")
	b.next(ofTypeCID("client_disconnected", c.cid))
	var mine []map[string]any
	eventually(t, "the disconnect logged", func() bool {
		mine = nil
		for _, l := range logLines(&buf) {
			if l["cid"] == c.cid {
				mine = append(mine, l)
			}
		}
		return len(mine) > 0 && mine[len(mine)-1]["msg"] == "client disconnected"
	})
	want := []string{"client connected", "client bound to backend", "client disconnected"}
	if len(mine) != len(want) {
		t.Fatalf("%d lines for one client and 100 messages, want %d: %v", len(mine), len(want), mine)
	}
	for i, l := range mine {
		if l["msg"] != want[i] || l["service"] != "chat" || l["node"] != n.id {
			t.Errorf("line %d = %v, want %q with service and node", i, l, want[i])
		}
	}
	if mine[1]["bkid"] != b.BKID() {
		t.Errorf("bound line %v lacks bkid %s", mine[1], b.BKID())
	}
}
