package node_test

import (
	"context"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/config"
)

func TestBadClientFramesGetAnErrorAndTheConnectionStaysOpen(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	cases := []struct {
		frame, error, id string
	}{
		{`not json`, "invalid JSON", ""},
		{`{"event":"dmb:message"`, "invalid JSON", ""},
		{`[1,2,3]`, "frame must be a JSON object", ""},
		{`"just a string"`, "frame must be a JSON object", ""},
		{`{"data":1,"id":3}`, "missing event", "3"},
		{`{"event":"dmb:subscribe","id":"x"}`, `unknown event "dmb:subscribe"`, `"x"`},
		{`{"event":42,"id":5}`, "event must be a string", "5"},
		{`{"event":"dmb:message","id":{"a":1}}`, "id must be a string or a number", ""},
		{"{\"event\":\"dmb:message\",\"data\":\"\xff\"}", "frame is not valid UTF-8", ""},
	}
	for _, tc := range cases {
		c.send(tc.frame)
		f := c.next()
		if f.Event != "dmb:error" || f.Error != tc.error || string(f.ID) != tc.id {
			t.Errorf("%s: got %+v, want error %q id %q", tc.frame, f, tc.error, tc.id)
		}
	}
	// Still open, and still working.
	c.send(`{"event":"dmb:message","data":"ok","id":1}`)
	if f := c.next(); f.Event != "dmb:ack" {
		t.Fatalf("after bad frames: %+v", f)
	}
	if ev := b.next(ofType("message")); string(ev.Data) != `"ok"` {
		t.Fatalf("backend got %+v, want only the good message", ev)
	}
}

func TestTooManyBadFramesInAMinuteCloseWith1008(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.ClientErrorLimit = 3 })
	e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	for range 4 {
		c.send(`nope`)
	}
	for range 4 {
		if f := c.next(); f.Event != "dmb:error" {
			t.Fatalf("frame = %+v", f)
		}
	}
	if code, _ := c.closed(); code != 1008 {
		t.Fatalf("close code %d, want 1008", code)
	}
}

func TestFrameOverMaxMessageBytesClosesWith1009(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.MaxMessageBytes = 1024 })
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:message","data":"` + strings.Repeat("x", 900) + `","id":1}`)
	if f := c.next(); f.Event != "dmb:ack" {
		t.Fatalf("frame under the limit: %+v", f)
	}
	c.send(`{"event":"dmb:message","data":"` + strings.Repeat("x", 1100) + `"}`)
	if code, _ := c.closed(); code != 1009 {
		t.Fatalf("close code %d, want 1009", code)
	}
	if ev := b.next(ofTypeCID("client_disconnected", c.cid)); ev.Code != 1009 {
		t.Fatalf("client_disconnected = %+v", ev)
	}
}

func TestBinaryFrameClosesWith1003(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	if err := c.conn.Write(context.Background(), websocket.MessageBinary, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if code, _ := c.closed(); code != 1003 {
		t.Fatalf("close code %d, want 1003", code)
	}
}

// rawUplink subscribes to a backend's uplink channel as the backend would.
func rawUplink(t *testing.T, e *env, bkid string) *redis.PubSub {
	t.Helper()
	ps := e.subscribe(e.ctx(), "dmb:uplink:"+bkid)
	t.Cleanup(func() { _ = ps.Close() })
	return ps
}

func TestMalformedBackendPayloadsAreDroppedCountedAndReported(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	cases := []struct{ payload, error, id string }{
		{`garbage`, "invalid JSON", ""},
		{`[1]`, "payload must be a JSON object", ""},
		{`{"type":"shout","data":1,"id":"s1"}`, `unknown type "shout"`, `"s1"`},
		{`{"data":1}`, "missing type", ""},
		{`{"type":"direct","data":1,"id":2}`, "direct needs a cid or a user", "2"},
		{`{"type":"kick","id":3}`, "kick needs a cid", "3"},
		{`{"type":"broadcast","id":[1]}`, "id must be a string or a number", ""},
		{`{"type":"direct","cid":"x","reply_to":{},"id":4}`, "reply_to must be a string or a number", "4"},
		{`{"type":"broadcast","cid":5}`, "", ""},
	}
	before := n.metric(`dmb_drops_total{reason="malformed"}`)
	for _, tc := range cases {
		b.publish(t, tc.payload)
		ev := b.next(ofType("error"))
		if tc.error != "" && (ev.Error != tc.error || string(ev.ID) != tc.id || ev.Node != n.id) {
			t.Errorf("%s: error event %+v, want %q id %q from %s", tc.payload, ev, tc.error, tc.id, n.id)
		}
	}
	if got := n.metric(`dmb_drops_total{reason="malformed"}`) - before; got != float64(len(cases)) {
		t.Errorf("malformed drops counted %v, want %d", got, len(cases))
	}
	// The node is fine and the client got none of it.
	b.publish(t, `{"type":"broadcast","data":"fine"}`)
	if f := c.next(); string(f.Data) != `"fine"` {
		t.Fatalf("client got %+v", f)
	}
}

func TestMalformedRegisterPayloadsAreDroppedAndCounted(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	before := n.metric(`dmb_drops_total{reason="malformed"}`)
	for _, p := range []string{`nope`, `{"type":"bk_connect"}`, `{"type":"bk_connect","nonce":"bad nonce!","service":"chat"}`, `{"type":"bk_hello"}`} {
		if err := e.publish(e.ctx(), "dmb:register", p); err != nil {
			t.Fatal(err)
		}
	}
	// With a known bkid, the backend hears why.
	_ = e.publish(e.ctx(), "dmb:register", `{"type":"bk_bye","bkid":"`+b.BKID()+`"}`)
	if ev := b.next(ofType("error")); ev.Error != `unknown type "bk_bye"` {
		t.Fatalf("error = %+v", ev)
	}
	eventually(t, "drops counted", func() bool {
		return n.metric(`dmb_drops_total{reason="malformed"}`)-before == 5
	})
	// Registration still works.
	e.register([]*testNode{n}, "chat", "")
}

func TestDownlinkForAnUnknownBKIDIsDropped(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	_ = e.publish(e.ctx(), "dmb:424242", `{"type":"broadcast","data":1}`)
	_ = e.publish(e.ctx(), "dmb:42x", `{"type":"broadcast","data":1}`)
	eventually(t, "unknown bkid counted", func() bool {
		return n.metric(`dmb_drops_total{reason="unknown_bkid"}`) == 1
	})
}

func TestABackendPayloadOverTheLimitIsDroppedCountedAndReported(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	before := n.metric(`dmb_drops_total{reason="too_large"}`)
	b.publish(t, `{"type":"broadcast","data":"`+strings.Repeat("x", 1<<20)+`"}`)
	if ev := b.next(ofType("error")); ev.Error != "payload too large" || ev.Node != n.id {
		t.Fatalf("error event %+v, want payload too large from %s", ev, n.id)
	}
	if got := n.metric(`dmb_drops_total{reason="too_large"}`) - before; got != 1 {
		t.Fatalf("too_large drops counted %v, want 1", got)
	}
	b.publish(t, `{"type":"broadcast","data":"fine"}`)
	if f := c.next(); string(f.Data) != `"fine"` {
		t.Fatalf("client got %+v", f)
	}
}
