package node_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/node"
)

// answer is a reply on dmb:register:{nonce}.
type answer struct {
	Type     string `json:"type"`
	Nonce    string `json:"nonce"`
	BKID     string `json:"bkid"`
	Service  string `json:"service"`
	Downlink string `json:"downlink"`
	Uplink   string `json:"uplink"`
	Error    string `json:"error"`
}

// registerRaw publishes a bk_connect as a backend in another language would
// and returns every answer published on the reply channel until all nodes
// have handled the request.
func (e *env) registerRaw(nodes []*testNode, payload string, nonce string) []answer {
	e.t.Helper()
	ctx := e.ctx()
	reply := "dmb:register:" + nonce
	ps := e.subscribe(ctx, reply)
	defer ps.Close()
	before := make([]float64, len(nodes))
	for i, n := range nodes {
		before[i] = n.metric(`dmb_messages_in_total{kind="register"}`)
	}
	if err := e.publish(ctx, "dmb:register", payload); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
	// Every node has handled the request, its answer included, once its
	// counter moved; a marker published after that arrives after every
	// answer.
	for i, n := range nodes {
		eventually(e.t, "node handled bk_connect", func() bool {
			return n.metric(`dmb_messages_in_total{kind="register"}`) > before[i]
		})
	}
	if err := e.publish(ctx, reply, "marker"); err != nil {
		e.t.Fatalf("publish marker: %v", err)
	}
	var answers []answer
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			e.t.Fatalf("receive: %v", err)
		}
		if msg.Payload == "marker" {
			return answers
		}
		var a answer
		if err := json.Unmarshal([]byte(msg.Payload), &a); err != nil {
			e.t.Fatalf("answer is not JSON: %q", msg.Payload)
		}
		answers = append(answers, a)
	}
}

// register registers service and returns the one answer.
func (e *env) register(nodes []*testNode, service, bkid string) answer {
	e.t.Helper()
	nonce := newNonce()
	req := map[string]string{"type": "bk_connect", "nonce": nonce, "service": service}
	if bkid != "" {
		req["bkid"] = bkid
	}
	b, _ := json.Marshal(req)
	answers := e.registerRaw(nodes, string(b), nonce)
	if len(answers) != 1 {
		e.t.Fatalf("got %d answers to one bk_connect, want exactly 1: %+v", len(answers), answers)
	}
	return answers[0]
}

var nonces atomic.Int64

// newNonce returns a nonce no other request of the test run uses.
func newNonce() string { return fmt.Sprintf("n-%d-%d", time.Now().UnixNano(), nonces.Add(1)) }

func TestBKConnectGetsExactlyOneAckWithThreeNodes(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode(), e.startNode()}
	for range 10 {
		a := e.register(nodes, "chat", "")
		if a.Type != "bk_connect_ack" || a.Service != "chat" {
			t.Fatalf("answer = %+v, want bk_connect_ack for chat", a)
		}
		if a.Downlink != "dmb:"+a.BKID || a.Uplink != "dmb:uplink:"+a.BKID {
			t.Fatalf("channels = %q %q for bkid %q", a.Downlink, a.Uplink, a.BKID)
		}
	}
}

func TestBKIDsAreDecimalStringsFromACounter(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	var prev uint64
	seen := map[string]bool{}
	for _, svc := range []string{"chat", "chat", "games", "news"} {
		a := e.register(nodes, svc, "")
		n, err := strconv.ParseUint(a.BKID, 10, 64)
		if err != nil || strconv.FormatUint(n, 10) != a.BKID {
			t.Fatalf("bkid %q is not a decimal number", a.BKID)
		}
		if n <= prev || seen[a.BKID] {
			t.Fatalf("bkid %d after %d: want a new, increasing bkid", n, prev)
		}
		prev, seen[a.BKID] = n, true
	}
	if got, err := e.rdb.Get(e.ctx(), "{dmb}:bkid").Uint64(); err != nil || got != prev {
		t.Fatalf("counter dmb:bkid = %d, %v; want %d", got, err, prev)
	}
}

func TestReRegisterWithOwnBKIDKeepsIt(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	first := e.register(nodes, "chat", "")
	again := e.register(nodes, "chat", first.BKID)
	if again.BKID != first.BKID {
		t.Fatalf("re-register with bkid %s got %s", first.BKID, again.BKID)
	}
}

func TestBKIDIsNeverHandedToAnotherService(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode()}
	chat := e.register(nodes, "chat", "")
	games := e.register(nodes, "games", chat.BKID)
	if games.BKID == chat.BKID || games.Type != "bk_connect_ack" {
		t.Fatalf("games asked for chat's bkid %s and got %+v", chat.BKID, games)
	}
	unknown := e.register(nodes, "chat", "999999999999999")
	if unknown.BKID == "999999999999999" {
		t.Fatalf("a bkid DMB never issued was handed out")
	}
}

func TestBKConnectWithInvalidServiceIsNacked(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode(), e.startNode()}
	for _, svc := range []string{"", "Chat", "has space", strings.Repeat("x", 65), "café"} {
		nonce := newNonce()
		b, _ := json.Marshal(map[string]string{"type": "bk_connect", "nonce": nonce, "service": svc})
		answers := e.registerRaw(nodes, string(b), nonce)
		if len(answers) != 1 || answers[0].Type != "bk_connect_nack" || answers[0].Error != "invalid service name" {
			t.Fatalf("service %q: answers %+v, want one nack \"invalid service name\"", svc, answers)
		}
	}
	// A service that is not even a string is still answered, once.
	nonce := newNonce()
	answers := e.registerRaw(nodes, `{"type":"bk_connect","nonce":"`+nonce+`","service":42}`, nonce)
	if len(answers) != 1 || answers[0].Type != "bk_connect_nack" {
		t.Fatalf("answers %+v, want one nack", answers)
	}
}

func TestRegistryLivesInRedisSoANodeRestartLosesNoBackend(t *testing.T) {
	e := newEnv(t)
	first := e.startNode()
	b := e.startBackend("chat")
	if err := first.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	second := e.startNode()
	c := connect(t, second, "chat").welcome()
	ev := b.next(ofTypeCID("client_connected", c.cid))
	if ev.Service != "chat" {
		t.Fatalf("client_connected = %+v", ev)
	}
	if n, err := e.rdb.Exists(e.ctx(), "{dmb}:services", "{dmb}:service:chat", "{dmb}:backend:"+b.BKID()).Result(); err != nil || n != 3 {
		t.Fatalf("registry keys in Redis: %d of 3 (%v)", n, err)
	}
}

func TestBKDisconnectMakesTheBackendNotLiveAtOnce(t *testing.T) {
	e := newEnv(t)
	// No liveness check comes during the test: the leave alone decides.
	n := e.startNode(func(c *config.Config) { c.BackendTimeout = time.Minute })
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b.next(ofTypeCID("client_connected", c.cid))
	if err := b.Leave(e.ctx()); err != nil {
		t.Fatal(err)
	}
	// The backend hears that it was marked gone.
	if ev := b.next(ofType("bk_disconnected")); ev.BKID != b.BKID() {
		t.Fatalf("bk_disconnected = %+v", ev)
	}
	// It still listens on its uplink, but it left: not live, even for a
	// look-up that a client of a service without live backend makes.
	if code := outcome(t, n.wsURL("chat")); code != 4503 {
		t.Fatalf("a client after bk_disconnect: %d, want 4503", code)
	}
	// Its clients stay connected.
	c.send(`{"event":"dmb:message","data":1,"id":1}`)
	if f := c.nextEvent("dmb:error"); f.Error != "backend unavailable" {
		t.Fatalf("error = %q", f.Error)
	}
}

func TestBackendsDeadLongerThanTheRetentionAreDroppedButMayComeBack(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.BackendRetention = time.Second })
	live := e.startBackend("chat")
	var crashed []string
	for range 3 {
		b := e.startBackend("chat")
		crashed = append(crashed, b.BKID())
		b.stop()
	}
	eventually(t, "crashed backends dropped from the service", func() bool {
		members, _ := e.rdb.SMembers(e.ctx(), "{dmb}:service:chat").Result()
		return len(members) == 1 && members[0] == live.BKID()
	})
	if ttl, _ := e.rdb.TTL(e.ctx(), "{dmb}:backend:"+crashed[0]).Result(); ttl <= 0 {
		t.Fatalf("record of a dropped bkid has TTL %v, want it to expire", ttl)
	}
	_, body := n.admin("GET", "/stats", "")
	var st node.AdminStats
	_ = json.Unmarshal([]byte(body), &st)
	if got := st.Backends["chat"].Registered; len(got) != 1 {
		t.Fatalf("view still holds %v", got)
	}
	// A backend that comes back with a dropped bkid keeps it.
	again := e.register([]*testNode{n}, "chat", crashed[0])
	if again.BKID != crashed[0] {
		t.Fatalf("came back with %s, got %s", crashed[0], again.BKID)
	}
	if ttl, _ := e.rdb.TTL(e.ctx(), "{dmb}:backend:"+crashed[0]).Result(); ttl != -1 {
		t.Fatalf("record of a bkid in use has TTL %v, want none", ttl)
	}
}

func TestAServiceKnownBeforeRedisLostItsDataGets4503Not4004(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	connect(t, n, "chat").welcome()
	b.stop()
	if err := e.rdb.FlushAll(e.ctx()).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "4503 for a service this node knew", func() bool {
		return outcome(t, n.wsURL("chat")) == 4503
	})
	if code, _ := refused(t, n.wsURL("never"), nil); code != 4004 {
		t.Fatalf("never registered: %d, want 4004", code)
	}
}
