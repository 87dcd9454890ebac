package deploy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The HTTP fallback (docs/protocol.md, section 12) through the proxies:
// an event stream down, POSTs up. The proxies' server configs compress
// event streams (see startNginx and startApache), as a careless global
// setting would; deploy/'s files must keep the fallback from it.

// sseStream reads an event stream's frames through a proxy.
type sseStream struct {
	t      *testing.T
	base   string // https://host:port
	client *http.Client
	header http.Header
	post   string // the path to POST frames to
	frames chan map[string]any
	ended  chan struct{}
}

// openStream opens GET /sse/chat through the proxy, as a browser would:
// from the loopback address from, same origin, accepting gzip; extra
// headers go with it and with the POSTs.
func (e *env) openStream(from string, extra http.Header) *sseStream {
	t := e.t
	t.Helper()
	base := "https://127.0.0.1:" + strconv.Itoa(e.px.https)
	tr := clientTransportFrom(t, e.cert, from)
	// A proxy that buffers the stream may hold back even its header.
	tr.ResponseHeaderTimeout = wait
	s := &sseStream{
		t: t, base: base,
		client: &http.Client{Transport: tr},
		header: extra.Clone(),
		frames: make(chan map[string]any, 100),
		ended:  make(chan struct{}),
	}
	if s.header == nil {
		s.header = http.Header{}
	}
	s.header.Set("Origin", base)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/sse/chat", nil)
	req.Header = s.header.Clone()
	req.Header.Set("Accept", "text/event-stream")
	// Set by hand, so that Go's transport neither asks for gzip itself nor
	// hides a Content-Encoding the proxy added.
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := s.client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open the stream (held in a buffer?): %v", err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		resp.Body.Close()
		t.Fatalf("open the stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		cancel()
		resp.Body.Close()
		t.Fatalf("the proxy compressed the event stream (%s)", ce)
	}
	posted := make(chan string, 1)
	go func() {
		defer close(s.ended)
		sc := bufio.NewScanner(resp.Body)
		fields := map[string]string{} // the event's lines so far
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ": "); ok {
				fields[k] = v
				continue
			}
			// A blank line ends the event.
			if fields["event"] == "post" {
				posted <- fields["data"]
			} else if data, ok := fields["data"]; ok {
				var f map[string]any
				if json.Unmarshal([]byte(data), &f) != nil {
					f = map[string]any{"unreadable": data}
				}
				s.frames <- f
			}
			clear(fields)
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-s.ended })
	select {
	case s.post = <-posted:
	case <-s.ended:
		t.Fatal("the stream ended before its post event")
	case <-time.After(wait):
		t.Fatal("no post event through the proxy")
	}
	return s
}

// next is the stream's next frame but dmb:session.
func (s *sseStream) next() map[string]any {
	s.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case f := <-s.frames:
			if f["event"] != "dmb:session" {
				return f
			}
		case <-s.ended:
			s.t.Fatal("the stream ended")
		case <-timeout:
			s.t.Fatal("no frame through the proxy: held in a buffer?")
		}
	}
}

// send POSTs frames, one per line, and returns the answer's status.
func (s *sseStream) send(frames ...string) int {
	s.t.Helper()
	req, _ := http.NewRequest("POST", s.base+s.post, strings.NewReader(strings.Join(frames, "\n")))
	req.Header = s.header.Clone()
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("POST %s: %v", s.post, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestTheHTTPFallbackThroughTheProxy(t *testing.T) {
	for _, kind := range proxies {
		t.Run(kind.name, func(t *testing.T) { testFallback(t, setup(t, kind)) })
	}
}

func testFallback(t *testing.T, e *env) {
	s := e.openStream(clientAddr, nil)
	if !strings.HasPrefix(s.post, "/sse/chat/") {
		t.Fatalf("post event %q", s.post)
	}
	f := s.next()
	cid, _ := f["cid"].(string)
	if f["event"] != "dmb:connected" || cid == "" {
		t.Fatalf("first frame %v", f)
	}
	// remote is the address the proxy saw and forwarded, not the proxy's.
	if ev := e.next("client_connected", cid); ev.Remote != clientAddr {
		t.Fatalf("remote = %q, want %s", ev.Remote, clientAddr)
	}
	if code := s.send(`{"event":"dmb:message","data":{"text":"hi"},"id":1}`); code != http.StatusNoContent {
		t.Fatalf("POST through the proxy: %d, want 204", code)
	}
	// The ack is the stream's only event for now: a proxy that buffers the
	// stream holds it until the timeout.
	if f := s.next(); f["event"] != "dmb:ack" || f["id"] != float64(1) {
		t.Fatalf("answer %v", f)
	}
	if ev := e.next("message", cid); string(ev.Data) != `{"text":"hi"}` {
		t.Fatalf("message %+v", ev)
	}
	ctx := context.Background()
	if err := e.b.Broadcast(ctx, "to all"); err != nil {
		t.Fatal(err)
	}
	if f := s.next(); f["event"] != "dmb:broadcast" || f["data"] != "to all" {
		t.Fatalf("broadcast %v", f)
	}
	if err := e.b.Direct(ctx, cid, "to you", 1); err != nil {
		t.Fatal(err)
	}
	if f := s.next(); f["event"] != "dmb:direct" || f["data"] != "to you" {
		t.Fatalf("direct %v", f)
	}
	// A key that is not a stream's: DMB's 404, through the proxy.
	s.post = "/sse/chat/not-a-key"
	if code := s.send(`{"event":"dmb:message","data":1}`); code != http.StatusNotFound {
		t.Fatalf("POST to no stream: %d, want 404", code)
	}
}

// A forged X-Forwarded-For or X-Real-IP does not make the fallback's
// client someone else, as on /ws/.
func TestTheFallbacksAddressCannotBeSpoofed(t *testing.T) {
	for _, kind := range proxies {
		t.Run(kind.name, func(t *testing.T) {
			e := setup(t, kind)
			s := e.openStream(clientAddr, http.Header{"X-Forwarded-For": {"6.6.6.6"}, "X-Real-Ip": {"6.6.6.7"}})
			cid, _ := s.next()["cid"].(string)
			if ev := e.next("client_connected", cid); ev.Remote != clientAddr {
				t.Fatalf("remote %q, want %s", ev.Remote, clientAddr)
			}
		})
	}
}

// With several DMB nodes behind nginx, a stream's POSTs reach the node
// that holds the stream (the only one that knows its key), and the
// clients are still spread over the nodes.
func TestTheFallbacksPOSTsReachTheirStreamsNode(t *testing.T) {
	e := setupNodes(t, proxies[0], 2)
	both := func() bool { return e.nodes[0].Broker().Clients() > 0 && e.nodes[1].Broker().Clients() > 0 }
	// Clients from addresses enough to land on both nodes.
	for i := 0; i < 40 && !both(); i++ {
		from := "127.0.0." + strconv.Itoa(30+i)
		s := e.openStream(from, nil)
		cid, _ := s.next()["cid"].(string)
		if ev := e.next("client_connected", cid); ev.Remote != from {
			t.Fatalf("remote %q, want %s", ev.Remote, from)
		}
		for id := 1; id <= 3; id++ {
			if code := s.send(`{"event":"dmb:message","data":0,"id":` + strconv.Itoa(id) + `}`); code != http.StatusNoContent {
				t.Fatalf("client %d from %s, POST %d: %d, want 204", i, from, id, code)
			}
			if f := s.next(); f["event"] != "dmb:ack" || f["id"] != float64(id) {
				t.Fatalf("answer %v", f)
			}
		}
	}
	if !both() {
		t.Errorf("clients by node %d and %d, want both nodes used", e.nodes[0].Broker().Clients(), e.nodes[1].Broker().Clients())
	}
}

// The fallback's idle streams last as long as a WebSocket does: nginx's
// /sse/ has /ws/'s timeouts; Apache's one ProxyTimeout serves both, with
// no ProxyPass of its own.
func TestTheFallbackIdlesAsLongAsTheWebSocket(t *testing.T) {
	nginx, err := os.ReadFile("nginx/dmb.conf")
	if err != nil {
		t.Fatal(err)
	}
	block := func(loc string) string {
		m := regexp.MustCompile(`(?s)location ` + regexp.QuoteMeta(loc) + ` \{(.*?)\n    \}`).FindStringSubmatch(string(nginx))
		if m == nil {
			t.Fatalf("nginx/dmb.conf has no location %s", loc)
		}
		return m[1]
	}
	ws, sse := block("/ws/"), block("/sse/")
	for _, d := range []string{"proxy_read_timeout", "proxy_send_timeout"} {
		re := regexp.MustCompile(`\n\s*` + d + `\s+([^;]+);`)
		w, s := re.FindStringSubmatch(ws), re.FindStringSubmatch(sse)
		if w == nil || s == nil || w[1] != s[1] {
			t.Errorf("nginx: %s is %v on /ws/, %v on /sse/", d, w, s)
		}
	}
	apache, err := os.ReadFile("apache/dmb.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`\n\s*ProxyTimeout\s+\d+`).Match(apache) {
		t.Error("apache: no ProxyTimeout")
	}
	if regexp.MustCompile(`\n\s*ProxyPass\s[^\n]*timeout=`).Match(apache) {
		t.Error("apache: a ProxyPass sets its own timeout; /ws/ and /sse/ must idle alike")
	}
}
