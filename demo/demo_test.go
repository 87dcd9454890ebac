package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

// The goroutines of a test's redis-server and demo backend are stopped in
// t.Cleanup, after a deferred goleak.VerifyNone would run; so check once all
// tests and their cleanups are done.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testBKID = "7"
	uplink   = "dmb:uplink:7"
	downlink = "dmb:7"
)

// eventually polls cond until it holds, failing the test when ctx ends first.
func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
}

// harness runs the demo backend against a real Redis, with the test in the
// role of DMB: it answers the registration and watches the downlink.
type harness struct {
	ctx      context.Context
	rdb      *redis.Client
	register *redis.PubSub // dmb:register, as DMB listens to it
	down     *redis.PubSub // dmb:7, the demo's downlink
	stop     func() error  // cancels Run and returns what it returned
}

func startDemo(t *testing.T) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	rdb := redistest.Start(t).Client()
	h := &harness{ctx: ctx, rdb: rdb, register: subscribe(t, ctx, rdb, "dmb:register"), down: subscribe(t, ctx, rdb, downlink)}

	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, rdb, backend.Options{Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	}()
	h.stop = sync.OnceValue(func() error {
		stopRun()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return errors.New("Run did not return after its context ended")
		}
	})
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	// Answer the bk_connect as DMB would.
	var req struct{ Type, Nonce, Service, BKID string }
	h.receive(t, h.register, &req)
	if req.Type != "bk_connect" || req.Service != "chat" || req.Nonce == "" || req.BKID != "" {
		t.Fatalf("first registration = %+v, want a bk_connect for chat without a bkid", req)
	}
	ack := fmt.Sprintf(`{"type":"bk_connect_ack","nonce":%q,"bkid":"7","service":"chat","downlink":"dmb:7","uplink":"dmb:uplink:7"}`, req.Nonce)
	if err := rdb.Publish(ctx, "dmb:register:"+req.Nonce, ack).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "the demo listens on "+uplink, func() bool {
		n, err := rdb.PubSubNumSub(ctx, uplink).Result()
		return err == nil && n[uplink] == 1
	})
	return h
}

func subscribe(t *testing.T, ctx context.Context, rdb *redis.Client, channel string) *redis.PubSub {
	t.Helper()
	ps := rdb.Subscribe(ctx, channel)
	t.Cleanup(func() { _ = ps.Close() })
	// Wait for the confirmation, or what is published next could be missed.
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe %s: %v", channel, err)
	}
	return ps
}

// send publishes an uplink event to the demo, as DMB would.
func (h *harness) send(t *testing.T, event string) {
	t.Helper()
	if err := h.rdb.Publish(h.ctx, uplink, event).Err(); err != nil {
		t.Fatal(err)
	}
}

// receive decodes the next payload on ps into v.
func (h *harness) receive(t *testing.T, ps *redis.PubSub, v any) {
	t.Helper()
	msg, err := ps.ReceiveMessage(h.ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if err := json.Unmarshal([]byte(msg.Payload), v); err != nil {
		t.Fatalf("decode %s: %v", msg.Payload, err)
	}
}

// expect checks that the demo's next downlink payload equals want as JSON.
func (h *harness) expect(t *testing.T, want string) {
	t.Helper()
	var got, exp any
	h.receive(t, h.down, &got)
	if err := json.Unmarshal([]byte(want), &exp); err != nil {
		t.Fatalf("bad want %s: %v", want, err)
	}
	if !reflect.DeepEqual(got, exp) {
		g, _ := json.Marshal(got)
		t.Fatalf("downlink:\n got %s\nwant %s", g, want)
	}
}

func TestPresenceIsBroadcastWhenClientsComeAndGo(t *testing.T) {
	h := startDemo(t)
	h.send(t, `{"type":"client_connected","cid":"c1","service":"chat","remote":"127.0.0.1"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":1,"names":["anon"]}}`)
	h.send(t, `{"type":"client_connected","cid":"c2","service":"chat","remote":"127.0.0.1"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["anon","anon"]}}`)
	h.send(t, `{"type":"client_disconnected","cid":"c1","code":1001,"reason":"going away"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":1,"names":["anon"]}}`)
	h.send(t, `{"type":"client_disconnected","cid":"c2","code":1000,"reason":""}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":0,"names":[]}}`)
}

func TestHelloNamesTheClientInPresence(t *testing.T) {
	h := startDemo(t)
	h.send(t, `{"type":"client_connected","cid":"c1","service":"chat","remote":"127.0.0.1"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":1,"names":["anon"]}}`)
	h.send(t, `{"type":"client_connected","cid":"c2","service":"chat","remote":"127.0.0.1"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["anon","anon"]}}`)

	// Names are cleaned like a chat line's, and sorted.
	h.send(t, `{"type":"message","cid":"c2","data":{"kind":"hello","name":"  zoe "},"id":1}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["anon","zoe"]}}`)
	h.send(t, `{"type":"message","cid":"c1","data":{"kind":"hello","name":"bob"},"id":1}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["bob","zoe"]}}`)
	// A new name replaces the old; a blank one is anon again.
	h.send(t, `{"type":"message","cid":"c1","data":{"kind":"hello","name":"amy"},"id":2}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["amy","zoe"]}}`)
	h.send(t, `{"type":"message","cid":"c2","data":{"kind":"hello","name":" "},"id":2}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["amy","anon"]}}`)
	h.send(t, `{"type":"message","cid":"c2","data":{"kind":"hello","name":"zoe"}}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["amy","zoe"]}}`)

	// A client rebound to this backend is announced again; it counts once
	// and keeps its name.
	h.send(t, `{"type":"client_connected","cid":"c2","service":"chat","remote":"127.0.0.1"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":2,"names":["amy","zoe"]}}`)
	h.send(t, `{"type":"client_disconnected","cid":"c1","code":1001,"reason":"going away"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":1,"names":["zoe"]}}`)

	// A hello gets no reply of its own: the answer to the next message is
	// what follows its presence.
	h.send(t, `{"type":"message","cid":"c2","data":{"kind":"hello","name":"zed"},"id":3}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":1,"names":["zed"]}}`)
	h.send(t, `{"type":"message","cid":"c2","data":{"kind":"chat","text":"hi"},"id":4}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"chat","name":"anon","text":"hi"}}`)
}

func TestTimeRequestIsAnsweredWithTheTime(t *testing.T) {
	h := startDemo(t)
	before := time.Now().Truncate(time.Second)
	h.send(t, `{"type":"message","cid":"c1","data":{"kind":"time"},"id":"t-1"}`)
	var got struct {
		Type, CID string
		ReplyTo   any `json:"reply_to"`
		Data      struct{ Kind, Now string }
	}
	h.receive(t, h.down, &got)
	after := time.Now()
	if got.Type != "direct" || got.CID != "c1" || got.ReplyTo != "t-1" || got.Data.Kind != "time" {
		t.Fatalf("downlink %+v, want a direct time reply to c1 with reply_to t-1", got)
	}
	now, err := time.Parse(time.RFC3339, got.Data.Now)
	if err != nil {
		t.Fatalf("now %q is not RFC 3339: %v", got.Data.Now, err)
	}
	if now.Before(before) || now.After(after) {
		t.Errorf("now %s, want between %s and %s", now, before, after)
	}
}

func TestChatMessageIsBroadcastAndEchoedToItsSender(t *testing.T) {
	h := startDemo(t)
	h.send(t, `{"type":"client_connected","cid":"c1","service":"chat","remote":"127.0.0.1"}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"presence","online":1,"names":["anon"]}}`)

	h.send(t, `{"type":"message","cid":"c1","data":{"name":"  bob ","text":"hi <b>all</b>","extra":[1]},"id":7}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"chat","name":"bob","text":"hi <b>all</b>"}}`)
	h.expect(t, `{"type":"direct","cid":"c1","reply_to":7,"data":{"kind":"echo","data":{"name":"  bob ","text":"hi <b>all</b>","extra":[1]}}}`)
}

func TestReplyToFollowsTheMessageID(t *testing.T) {
	h := startDemo(t)
	for _, tc := range []struct{ name, id, replyTo string }{
		{"string id", `,"id":"m-1"`, `,"reply_to":"m-1"`},
		{"number id", `,"id":12.5`, `,"reply_to":12.5`},
		{"no id", ``, ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.send(t, `{"type":"message","cid":"c1","data":{"text":"x"}`+tc.id+`}`)
			h.expect(t, `{"type":"broadcast","data":{"kind":"chat","name":"anon","text":"x"}}`)
			h.expect(t, `{"type":"direct","cid":"c1","data":{"kind":"echo","data":{"text":"x"}}`+tc.replyTo+`}`)
		})
	}
}

func TestChatLineMayNameItsKind(t *testing.T) {
	h := startDemo(t)
	h.send(t, `{"type":"message","cid":"c1","data":{"kind":"chat","name":"bob","text":"hi"},"id":3}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"chat","name":"bob","text":"hi"}}`)
	h.expect(t, `{"type":"direct","cid":"c1","reply_to":3,"data":{"kind":"echo","data":{"kind":"chat","name":"bob","text":"hi"}}}`)
}

func TestNameAndTextAreCleaned(t *testing.T) {
	h := startDemo(t)
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	for _, tc := range []struct {
		name     string
		data     string
		wantName string
		wantText string
	}{
		{"no name is anon", `{"text":"hi"}`, "anon", "hi"},
		{"blank name is anon", `{"text":"hi","name":"   "}`, "anon", "hi"},
		{"null name is anon", `{"text":"hi","name":null}`, "anon", "hi"},
		{"text is trimmed", `{"text":"  hi\n"}`, "anon", "hi"},
		{"name is cut to 32 runes", `{"text":"hi","name":"` + long("é", 40) + `"}`, long("é", 32), "hi"},
		{"text is cut to 500 runes", `{"text":"` + long("ж", 600) + `"}`, "anon", long("ж", 500)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.send(t, `{"type":"message","cid":"c1","data":`+tc.data+`,"id":1}`)
			line, _ := json.Marshal(chatLine{Kind: "chat", Name: tc.wantName, Text: tc.wantText})
			h.expect(t, `{"type":"broadcast","data":`+string(line)+`}`)
			// The echo carries the data as received, not as cleaned.
			h.expect(t, `{"type":"direct","cid":"c1","reply_to":1,"data":{"kind":"echo","data":`+tc.data+`}}`)
		})
	}
}

func TestDataThatIsNotUnderstoodGetsAnErrorAndNoBroadcast(t *testing.T) {
	h := startDemo(t)
	for _, tc := range []struct{ name, data, error string }{
		{"string", `"hi"`, `data must be a JSON object with a \"text\" string`},
		{"array", `[1,2]`, `data must be a JSON object with a \"text\" string`},
		{"null", `null`, `data must be a JSON object with a \"text\" string`},
		{"no text", `{"name":"bob"}`, `data must be a JSON object with a \"text\" string`},
		{"text not a string", `{"text":5}`, `data must be a JSON object with a \"text\" string`},
		{"blank text", `{"text":"  "}`, `\"text\" is empty`},
		{"name not a string", `{"text":"hi","name":3}`, `\"name\" must be a string`},
		{"kind not a string", `{"kind":1,"text":"hi"}`, `\"kind\" must be a string`},
		{"unknown kind", `{"kind":"dance","text":"hi"}`, `unknown kind \"dance\"`},
		{"hello with a name not a string", `{"kind":"hello","name":["bob"]}`, `\"name\" must be a string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.send(t, `{"type":"message","cid":"c1","data":`+tc.data+`,"id":"q"}`)
			// A broadcast would come before the reply, so the reply being
			// next shows there was none.
			h.expect(t, `{"type":"direct","cid":"c1","reply_to":"q","data":{"kind":"error","error":"`+tc.error+`"}}`)
		})
	}
}

func TestOtherEventsAreIgnored(t *testing.T) {
	h := startDemo(t)
	h.send(t, `{"type":"bk_message_ack","id":"m-9","node":"dmb-a1","delivered":3}`)
	h.send(t, `{"type":"error","error":"unknown type","node":"dmb-a1"}`)
	h.send(t, `{"type":"something_new","cid":"c1"}`)
	h.send(t, `not json`)
	// The answer to this message is the next thing on the downlink.
	h.send(t, `{"type":"message","cid":"c1","data":{"text":"still here"},"id":1}`)
	h.expect(t, `{"type":"broadcast","data":{"kind":"chat","name":"anon","text":"still here"}}`)
}

func TestRunLeavesAndReturnsNilWhenItsContextEnds(t *testing.T) {
	h := startDemo(t)
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	var leave struct{ Type, BKID string }
	h.receive(t, h.register, &leave)
	if leave.Type != "bk_disconnect" || leave.BKID != testBKID {
		t.Fatalf("after stop, register got %+v, want a bk_disconnect for bkid 7", leave)
	}
	eventually(t, h.ctx, "the uplink subscription is gone", func() bool {
		n, err := h.rdb.PubSubNumSub(h.ctx, uplink).Result()
		return err == nil && n[uplink] == 0
	})
}

// getPage requests path from srv and returns the response with its body.
func getPage(t *testing.T, ctx context.Context, srv *httptest.Server, method, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestPageServesTheChatAtRootAndDMBJS(t *testing.T) {
	srv := httptest.NewServer(Page())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, tc := range []struct {
		method, path string
		status       int
		contentType  string
	}{
		{http.MethodGet, "/", http.StatusOK, "text/html; charset=utf-8"},
		{http.MethodHead, "/", http.StatusOK, "text/html; charset=utf-8"},
		{http.MethodGet, "/dmb.js", http.StatusOK, "text/javascript; charset=utf-8"},
		{http.MethodHead, "/dmb.js", http.StatusOK, "text/javascript; charset=utf-8"},
		{http.MethodGet, "/dmb.d.ts", http.StatusOK, "application/typescript; charset=utf-8"},
		{http.MethodGet, "/x", http.StatusNotFound, ""},
		{http.MethodGet, "/index.html", http.StatusNotFound, ""},
		{http.MethodGet, "/static/index.html", http.StatusNotFound, ""},
		{http.MethodPost, "/", http.StatusMethodNotAllowed, ""},
		{http.MethodPost, "/dmb.js", http.StatusMethodNotAllowed, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			res, body := getPage(t, ctx, srv, tc.method, tc.path)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tc.status)
			}
			if tc.status != http.StatusOK {
				return
			}
			if ct := res.Header.Get("Content-Type"); ct != tc.contentType {
				t.Errorf("Content-Type %q, want %q", ct, tc.contentType)
			}
			if tc.method == http.MethodGet && tc.path == "/dmb.js" && !strings.Contains(body, "export class DMB") {
				t.Errorf("/dmb.js is not dmb.js")
			}
			if tc.path != "/" {
				return
			}
			if cc := res.Header.Get("Cache-Control"); cc != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", cc)
			}
			if tc.method == http.MethodGet {
				for _, want := range []string{`<script type="module">`, `import { DMB } from "/dmb.js";`, `service: "chat"`} {
					if !strings.Contains(body, want) {
						t.Errorf("page does not contain %s", want)
					}
				}
			}
		})
	}
}

// The browser tests select these; renaming one breaks them.
func TestPageHasTheElementsBrowserTestsSelect(t *testing.T) {
	page := string(indexHTML)
	for _, want := range []string{
		`id="name"`, `id="text"`, `id="send"`, `id="time"`, `id="messages"`, `id="online"`, `id="status"`, `id="cid"`,
		`id="room"`, `id="join"`, `id="rooms"`, `id="to"`,
		`li.dataset.room = room;`,         // room lines and #rooms entries have data-room
		`li.append(el("div", "members", `, // a joined room's members
		`li.dataset.kind = kind;`,         // every .line of #messages has data-kind
		`ui.status.textContent = status;`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page does not contain %s", want)
		}
	}
}

func TestPageCSPAllowsDMBJSAndTheSocketOnly(t *testing.T) {
	srv := httptest.NewServer(Page())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	res, _ := getPage(t, ctx, srv, http.MethodGet, "/")
	directives := map[string][]string{}
	for _, d := range strings.Split(res.Header.Get("Content-Security-Policy"), ";") {
		if f := strings.Fields(d); len(f) > 0 {
			directives[f[0]] = f[1:]
		}
	}
	for _, tc := range []struct {
		directive string
		want      []string
	}{
		{"default-src", []string{"'none'"}},
		// The page's inline module and /dmb.js from its own origin.
		{"script-src", []string{"'self'", "'unsafe-inline'"}},
		// The WebSocket to /ws/chat on the page's host.
		{"connect-src", []string{"'self'", "ws:", "wss:"}},
		{"base-uri", []string{"'none'"}},
		{"frame-ancestors", []string{"'none'"}},
	} {
		if got := directives[tc.directive]; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s %q, want %q", tc.directive, got, tc.want)
		}
	}
}

func TestPageRevalidatesWithItsETag(t *testing.T) {
	srv := httptest.NewServer(Page())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	get := func(etag string) *http.Response {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	etag := get("").Header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	if res := get(etag); res.StatusCode != http.StatusNotModified {
		t.Fatalf("status %d with a matching ETag, want 304", res.StatusCode)
	}
}

// wsClient is a client of a real DMB node in the rooms test: it keeps
// every frame it read, so that a test can check what it never got.
type wsClient struct {
	t      *testing.T
	name   string
	conn   *websocket.Conn
	cid    string
	frames []map[string]any
	used   map[int]bool // frames that until returned
	nextID int
}

// dial connects to the service chat of n, retrying while the node does not
// see the demo backend live yet (4503), and reads dmb:connected.
func dial(t *testing.T, n *nodetest.Node, name string) *wsClient {
	t.Helper()
	c := &wsClient{t: t, name: name, used: make(map[int]bool)}
	nodetest.Eventually(t, name+" connected", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, n.WSURL("chat"), nil)
		if err != nil {
			return false
		}
		_, data, err := conn.Read(ctx)
		var f struct{ Event, CID string }
		if err != nil || json.Unmarshal(data, &f) != nil || f.Event != "dmb:connected" {
			conn.CloseNow()
			return false
		}
		c.conn, c.cid = conn, f.CID
		return true
	})
	t.Cleanup(func() { c.conn.CloseNow() })
	return c
}

// send sends data as a dmb:message with a new id, and returns the id.
func (c *wsClient) send(data string) float64 {
	c.t.Helper()
	c.nextID++
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"event":"dmb:message","data":%s,"id":%d}`, data, c.nextID)); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
	return float64(c.nextID)
}

// request sends data and returns the data of the dmb:direct that answers
// it, keeping every frame read meanwhile.
func (c *wsClient) request(data string) map[string]any {
	c.t.Helper()
	id := c.send(data)
	f := c.until(func(f map[string]any) bool { return f["event"] == "dmb:direct" && f["reply_to"] == id })
	reply, _ := f["data"].(map[string]any)
	return reply
}

// until returns the first frame that matches and no earlier until
// returned: one read already, or the next ones, read and kept.
func (c *wsClient) until(match func(map[string]any) bool) map[string]any {
	c.t.Helper()
	for i, f := range c.frames {
		if !c.used[i] && match(f) {
			c.used[i] = true
			return f
		}
	}
	for {
		f := nodetest.ReadJSON(c.t, c.conn)
		c.frames = append(c.frames, f)
		if f["event"] == "dmb:error" {
			c.t.Fatalf("%s got %v", c.name, f)
		}
		if match(f) {
			c.used[len(c.frames)-1] = true
			return f
		}
	}
}

// roomFrame matches a dmb:room frame of room whose data has kind and, when
// text is not empty, that text.
func roomFrame(room, kind, text string) func(map[string]any) bool {
	return func(f map[string]any) bool {
		d, _ := f["data"].(map[string]any)
		return f["event"] == "dmb:room" && f["room"] == room && d["kind"] == kind && (text == "" || d["text"] == text)
	}
}

func TestRoomMembersGetEachOthersLinesAndOthersDoNot(t *testing.T) {
	r := redistest.Start(t)
	n := nodetest.Start(t, nodetest.Config(t, r), node.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, rdb, backend.Options{Logger: nodetest.Logger()}) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	amy, bob, cat := dial(t, n, "amy"), dial(t, n, "bob"), dial(t, n, "cat")
	for _, c := range []*wsClient{amy, bob, cat} {
		c.send(`{"kind":"hello","name":"` + c.name + `"}`)
		// A hello has no reply of its own: a time request's reply shows
		// the hello was handled.
		if got := c.request(`{"kind":"time"}`); got["kind"] != "time" {
			t.Fatalf("%s: time reply %v", c.name, got)
		}
	}

	if got := amy.request(`{"join":"lobby"}`); got["kind"] != "joined" || got["room"] != "lobby" {
		t.Fatalf("reply to amy's join: %v", got)
	}
	if got := bob.request(`{"join":"lobby"}`); got["kind"] != "joined" || got["room"] != "lobby" {
		t.Fatalf("reply to bob's join: %v", got)
	}
	// DMB told each that it joined, and the room who is in it.
	for _, c := range []*wsClient{amy, bob} {
		c.until(func(f map[string]any) bool { return f["event"] == "dmb:joined" && f["room"] == "lobby" })
		members := c.until(func(f map[string]any) bool {
			d, _ := f["data"].(map[string]any)
			return roomFrame("lobby", "members", "")(f) && d["online"] == float64(2)
		})
		if names := fmt.Sprint(members["data"].(map[string]any)["names"]); names != "[amy bob]" {
			t.Errorf("%s: lobby members %s, want [amy bob]", c.name, names)
		}
	}
	if got := cat.request(`{"kind":"rooms"}`); fmt.Sprint(got["rooms"]) != "[map[members:2 room:lobby]]" {
		t.Errorf("room list %v, want lobby with 2 members", got["rooms"])
	}

	// Each member gets the other's lines as room messages.
	if got := amy.request(`{"say":"hi bob","room":"lobby"}`); got["kind"] != "echo" {
		t.Fatalf("reply to amy's line: %v", got)
	}
	if got := bob.request(`{"say":"hi amy","room":"lobby"}`); got["kind"] != "echo" {
		t.Fatalf("reply to bob's line: %v", got)
	}
	for _, tc := range []struct {
		c          *wsClient
		from, text string
	}{{bob, "amy", "hi bob"}, {amy, "bob", "hi amy"}} {
		f := tc.c.until(roomFrame("lobby", "chat", tc.text))
		if d := f["data"].(map[string]any); d["name"] != tc.from {
			t.Errorf("%s got %v, want a line of %s", tc.c.name, d, tc.from)
		}
	}

	// cat, outside the room, cannot speak in it, and after its answer
	// (published after every line above) it has had no room message.
	if got := cat.request(`{"say":"let me in","room":"lobby"}`); got["kind"] != "error" {
		t.Errorf("reply to a line of a non-member: %v, want an error", got)
	}
	cat.request(`{"kind":"time"}`)
	for _, f := range cat.frames {
		if f["event"] == "dmb:room" || f["event"] == "dmb:joined" {
			t.Errorf("cat, outside the room, got %v", f)
		}
		if d, _ := f["data"].(map[string]any); d["kind"] == "chat" {
			t.Errorf("cat got a room line another way: %v", f)
		}
	}
	// Room lines reach members as room messages, not directs.
	for _, c := range []*wsClient{amy, bob} {
		for _, f := range c.frames {
			if d, _ := f["data"].(map[string]any); f["event"] != "dmb:room" && d["kind"] == "chat" {
				t.Errorf("%s got a line as %v", c.name, f)
			}
		}
	}

	// bob leaves: amy is told who is left, bob hears the room no more.
	if got := bob.request(`{"leave":"lobby"}`); got["kind"] != "left" {
		t.Fatalf("reply to bob's leave: %v", got)
	}
	bob.until(func(f map[string]any) bool { return f["event"] == "dmb:left" && f["room"] == "lobby" })
	amy.until(func(f map[string]any) bool {
		d, _ := f["data"].(map[string]any)
		return roomFrame("lobby", "members", "")(f) && d["online"] == float64(1)
	})
	amy.request(`{"say":"anyone?","room":"lobby"}`)
	amy.until(roomFrame("lobby", "chat", "anyone?"))
	mark := len(bob.frames)
	bob.request(`{"kind":"time"}`)
	for _, f := range bob.frames[mark:] {
		if f["event"] == "dmb:room" {
			t.Errorf("bob got %v after leaving", f)
		}
	}

	// A new name shows in the rooms its client is in.
	amy.send(`{"kind":"hello","name":"ann"}`)
	amy.until(func(f map[string]any) bool {
		d, _ := f["data"].(map[string]any)
		return roomFrame("lobby", "members", "")(f) && fmt.Sprint(d["names"]) == "[ann]"
	})
}

func TestRoomMessagesThatAreNotUnderstoodGetAnErrorAndNoCommand(t *testing.T) {
	h := startDemo(t)
	for _, tc := range []struct{ name, data, reply string }{
		{"join not a string", `{"join":5}`, `{"kind":"error","error":"\"join\", \"leave\" and \"room\" must be strings"}`},
		{"leave not a string", `{"leave":null}`, `{"kind":"error","error":"\"join\", \"leave\" and \"room\" must be strings"}`},
		{"invalid room name", `{"join":"no spaces"}`, `{"kind":"error","error":"invalid room name \"no spaces\": 1-128 of [A-Za-z0-9_.:@/-]"}`},
		{"say without a room", `{"say":"hi"}`, `{"kind":"error","error":"\"join\", \"leave\" and \"room\" must be strings"}`},
		{"say not a string", `{"say":["hi"],"room":"lobby"}`, `{"kind":"error","error":"\"say\" must be a string"}`},
		{"blank say", `{"say":"  ","room":"lobby"}`, `{"kind":"error","error":"\"say\" is empty"}`},
		{"say outside the room", `{"say":"hi","room":"lobby"}`, `{"kind":"error","error":"not in room \"lobby\": join it first"}`},
		// Leaving a room the client is not in changes nothing.
		{"leave a room not joined", `{"leave":"lobby"}`, `{"kind":"left","room":"lobby"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.send(t, `{"type":"message","cid":"c1","data":`+tc.data+`,"id":"q"}`)
			// A command would come before the reply, so the reply being
			// next shows there was none.
			h.expect(t, `{"type":"direct","cid":"c1","reply_to":"q","data":`+tc.reply+`}`)
		})
	}
}
