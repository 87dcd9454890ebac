package node_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/node"
)

func TestConnectedFrameCarriesACIDUniqueAcrossNodes(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	e.startBackend("chat")
	seen := map[string]bool{}
	for i := range 40 {
		c := connect(t, nodes[i%2], "chat")
		f := c.next()
		if f.Event != "dmb:connected" || f.Service != "chat" || len(f.CID) < 16 {
			t.Fatalf("first frame = %+v", f)
		}
		if seen[f.CID] {
			t.Fatalf("cid %s handed out twice", f.CID)
		}
		seen[f.CID] = true
	}
}

func TestBackendHearsClientConnectedAndDisconnected(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	ev := b.next(ofTypeCID("client_connected", c.cid))
	if ev.Service != "chat" || ev.Remote != "127.0.0.1" {
		t.Fatalf("client_connected = %+v", ev)
	}
	_ = c.conn.Close(1001, "going away")
	ev = b.next(ofTypeCID("client_disconnected", c.cid))
	if ev.Code != 1001 || ev.Reason != "going away" {
		t.Fatalf("client_disconnected = %+v, want 1001 going away", ev)
	}
}

func TestUnknownServiceIsClosedWith4004(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	for _, svc := range []string{"nosuch", "Bad%20Name"} {
		if code, _ := refused(t, n.wsURL(svc), nil); code != 4004 {
			t.Fatalf("%s: close code %d, want 4004", svc, code)
		}
	}
}

func TestKnownServiceWithoutLiveBackendIsClosedWith4503(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	b.stop()
	eventually(t, "4503", func() bool {
		return outcome(t, n.wsURL("chat")) == 4503
	})
}

func TestClientsAreSpreadOverLiveBackends(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b1, b2 := e.startBackend("chat"), e.startBackend("chat")
	eventually(t, "both backends live on the node", func() bool {
		_, body := n.admin("GET", "/stats", "")
		var st node.AdminStats
		_ = json.Unmarshal([]byte(body), &st)
		return len(st.Backends["chat"].Live) == 2
	})
	const clients = 20
	var cs []*wsClient
	for range clients {
		c := connect(t, n, "chat").welcome()
		c.send(`{"event":"dmb:message","data":0,"id":1}`)
		cs = append(cs, c)
	}
	// Once every client's message is acked, every client_connected has been
	// published: it goes out before the client's first message.
	for _, c := range cs {
		c.nextEvent("dmb:ack")
	}
	per := map[*testBackend]int{}
	bound := map[string]int{}
	for _, b := range []*testBackend{b1, b2} {
		b.caughtUp()
		for _, ev := range b.held {
			if ev.Type == "client_connected" {
				per[b]++
				bound[ev.CID]++
			}
		}
	}
	for _, c := range cs {
		if bound[c.cid] != 1 {
			t.Fatalf("client %s announced to %d backends, want exactly 1", c.cid, bound[c.cid])
		}
	}
	if per[b1] < clients/4 || per[b2] < clients/4 {
		t.Fatalf("spread %d / %d over two live backends", per[b1], per[b2])
	}
}

func TestCrashedBackendIsNoticedWithinBackendTimeout(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b1 := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b1.next(ofTypeCID("client_connected", c.cid))
	b2 := e.startBackend("chat")
	b1.stop()
	crashed := time.Now()
	// Without any message from the client, the liveness check moves it.
	ev := b2.next(ofTypeCID("client_connected", c.cid))
	if ev.Service != "chat" {
		t.Fatalf("client_connected = %+v", ev)
	}
	// DMB_BACKEND_TIMEOUT is 1s in these tests; allow for a loaded machine.
	if took := time.Since(crashed); took > 2*time.Second {
		t.Fatalf("crash noticed after %v, want within the backend timeout", took)
	}
}

func TestRemoteHonoursXForwardedForOnlyFromTrustedProxies(t *testing.T) {
	e := newEnv(t)
	trusting := e.startNode() // loopback is trusted by default
	distrusting := e.startNode(func(c *config.Config) { c.TrustedProxies = []string{"10.0.0.0/8"} })
	b := e.startBackend("chat")
	cases := []struct {
		n      *testNode
		header http.Header
		want   string
	}{
		{trusting, http.Header{"X-Forwarded-For": {"203.0.113.9"}}, "203.0.113.9"},
		{trusting, http.Header{"X-Forwarded-For": {"198.51.100.1, 203.0.113.9, 127.0.0.1"}}, "203.0.113.9"},
		{trusting, http.Header{"X-Real-Ip": {"203.0.113.7"}}, "203.0.113.7"},
		{trusting, http.Header{"X-Forwarded-For": {"not-an-ip"}}, "127.0.0.1"},
		{distrusting, http.Header{"X-Forwarded-For": {"203.0.113.9"}}, "127.0.0.1"},
		{distrusting, http.Header{"X-Real-Ip": {"203.0.113.7"}}, "127.0.0.1"},
	}
	for _, tc := range cases {
		c := connectURL(t, tc.n.wsURL("chat"), tc.header).welcome()
		if ev := b.next(ofTypeCID("client_connected", c.cid)); ev.Remote != tc.want {
			t.Errorf("%v via %s: remote %q, want %q", tc.header, tc.n.id, ev.Remote, tc.want)
		}
	}
}

func TestOriginPolicy(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.AllowedOrigins = []string{"app.example.com", "*.trusted.test"} })
	e.startBackend("chat")
	host := n.Addr().String()
	allowed := []string{"", "http://" + host, "https://app.example.com", "https://a.trusted.test"}
	for _, origin := range allowed {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		connectURL(t, n.wsURL("chat"), h).welcome()
	}
	for _, origin := range []string{"https://evil.test", "http://app.example.com.evil.test", "null"} {
		if code, reason := refused(t, n.wsURL("chat"), http.Header{"Origin": {origin}}); code != 1008 {
			t.Errorf("origin %s: close %d %q, want 1008", origin, code, reason)
		}
	}
}

// A crowd that connects just as the service's first backend registers is
// served: a look-up in progress is waited for, not taken as an answer.
func TestABurstOfClientsRightAfterRegistrationIsAccepted(t *testing.T) {
	for round := range 5 {
		e := newEnv(t)
		n := e.startNode()
		// The node registered the backend but has not looked up whether it
		// is live: the first client's look-up is the one the crowd waits for.
		e.startBackend("chat")
		const crowd = 30
		codes := make(chan websocket.StatusCode, crowd)
		for range crowd {
			go func() { codes <- outcome(t, n.wsURL("chat")) }()
		}
		for range crowd {
			if code := <-codes; code != 0 {
				t.Fatalf("round %d: a client was refused with %d right after a backend registered", round, code)
			}
		}
	}
}
