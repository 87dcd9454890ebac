package node_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
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
		code, _ := refused(t, n.wsURL("chat"), nil)
		return code == 4503
	})
}

func TestClientsAreSpreadOverLiveBackends(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b1, b2 := e.startBackend("chat"), e.startBackend("chat")
	// Both are live once a client of each has been seen; spread means
	// neither gets them all.
	per := map[string]int{}
	eventually(t, "both backends get clients", func() bool {
		c := connect(t, n, "chat").welcome()
		select {
		case ev := <-b1.events:
			per[b1.BKID()] += boolInt(ev.CID == c.cid)
		case ev := <-b2.events:
			per[b2.BKID()] += boolInt(ev.CID == c.cid)
		}
		return per[b1.BKID()] > 0 && per[b2.BKID()] > 0
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestClientOfADeadBackendMovesToALiveOneWhichHearsClientConnectedFirst(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b1 := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b1.next(ofTypeCID("client_connected", c.cid))
	b2 := e.startBackend("chat")
	b1.stop() // crash: no bk_disconnect
	c.send(`{"event":"dmb:message","data":"after","id":1}`)
	if f := c.nextEvent("dmb:ack"); string(f.ID) != "1" {
		t.Fatalf("ack = %+v", f)
	}
	first := b2.next(func(ev backendEvent) bool { return ev.CID == c.cid })
	if first.Type != "client_connected" {
		t.Fatalf("new backend first heard %+v, want client_connected", first)
	}
	msg := b2.next(ofTypeCID("message", c.cid))
	if string(msg.Data) != `"after"` {
		t.Fatalf("message = %+v", msg)
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
