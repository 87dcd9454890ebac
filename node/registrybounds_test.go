package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/registry"
)

func TestServicesWithoutALiveBackendForTheRetentionAreForgotten(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.BackendRetention = time.Second })
	live := e.startBackend("chat")
	crashed := e.startBackend("crashed")
	crashed.stop()
	left := e.startBackend("left")
	if err := left.Leave(e.ctx()); err != nil {
		t.Fatal(err)
	}
	left.stop()
	eventually(t, "the services without a backend gone from the services set", func() bool {
		members, _ := e.rdb.SMembers(e.ctx(), "{dmb}:services").Result()
		return slices.Equal(members, []string{"chat"})
	})
	if got, _ := e.rdb.Exists(e.ctx(), "{dmb}:service:crashed", "{dmb}:service:left").Result(); got != 0 {
		t.Errorf("%d sets of bkids of forgotten services remain", got)
	}
	// Forgotten: as if never registered. The live one stays.
	for _, svc := range []string{"crashed", "left"} {
		if code := outcome(t, n.wsURL(svc)); code != 4004 {
			t.Errorf("a client of %s: %d, want 4004", svc, code)
		}
	}
	c := connect(t, n, "chat").welcome()
	live.next(ofTypeCID("client_connected", c.cid))
	if got := n.metric(`dmb_registry_pruned_total{what="service"}`); got != 2 {
		t.Errorf("services pruned: %v, want 2", got)
	}
	eventually(t, "the view holds one service", func() bool { return n.metric("dmb_services") == 1 })
	// A forgotten service may register again.
	again := e.startBackend("crashed")
	if code := outcome(t, n.wsURL("crashed")); code != 0 {
		t.Fatalf("a client of crashed after it registered again: %d", code)
	}
	again.stop()
}

// honestRound connects a client to service, sends one message with an id
// and waits for its ack, and returns how long the connect and the ack took.
func honestRound(t *testing.T, n *testNode, b *testBackend, service string) (connected, acked time.Duration) {
	t.Helper()
	defer func() { // none of the backend's events matter here
		for {
			select {
			case <-b.events:
			default:
				return
			}
		}
	}()
	start := time.Now()
	c := connect(t, n, service).welcome()
	connected = time.Since(start)
	start = time.Now()
	c.send(`{"event":"dmb:message","data":1,"id":1}`)
	if f := c.nextEvent("dmb:ack"); string(f.ID) != "1" {
		t.Fatalf("ack = %+v", f)
	}
	acked = time.Since(start)
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
	<-c.ended
	return connected, acked
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// The flood's size: DMB_TEST_FLOOD, else enough to pass DMB_MAX_SERVICES.
func floodSize(t *testing.T) int {
	if s := os.Getenv("DMB_TEST_FLOOD"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("DMB_TEST_FLOOD: %v", err)
		}
		return n
	}
	return registry.DefaultMaxServices + 2000
}

func TestARegistrationFloodIsBoundedCountedAndCostsHonestClientsLittle(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	const rounds = 60
	var quietConn, quietAck []time.Duration
	for range rounds {
		c, a := honestRound(t, n, b, "chat")
		quietConn, quietAck = append(quietConn, c), append(quietAck, a)
	}

	// bk_connect for new services, as fast as one Redis connection sends them.
	flood := floodSize(t)
	before := n.metric(`dmb_messages_in_total{kind="register"}`)
	floodDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		rdb := e.client()
		for sent := 0; sent < flood; {
			pipe := rdb.Pipeline()
			for range 500 {
				req, _ := json.Marshal(map[string]string{"type": "bk_connect", "nonce": fmt.Sprintf("flood-%d", sent), "service": fmt.Sprintf("junk-%d", sent)})
				pipe.Publish(ctx, "dmb:register", req)
				sent++
			}
			if _, err := pipe.Exec(ctx); err != nil {
				floodDone <- err
				return
			}
		}
		floodDone <- nil
	}()
	handled := func() bool { return n.metric(`dmb_messages_in_total{kind="register"}`)-before >= float64(flood) }
	var floodConn, floodAck []time.Duration
	start := time.Now()
	for len(floodConn) < rounds || !handled() {
		if time.Since(start) > 5*time.Minute {
			t.Fatal("the flood was not handled within 5 minutes")
		}
		c, a := honestRound(t, n, b, "chat")
		floodConn, floodAck = append(floodConn, c), append(floodAck, a)
	}
	took := time.Since(start)
	if err := <-floodDone; err != nil {
		t.Fatalf("flood: %v", err)
	}

	limit := registry.DefaultMaxServices
	if got, _ := e.rdb.SCard(e.ctx(), "{dmb}:services").Result(); got != int64(min(flood+1, limit)) {
		t.Errorf("services after the flood: %d, want %d", got, min(flood+1, limit))
	}
	if got := n.metric(`dmb_registrations_total{result="service_limit"}`); got != float64(max(0, flood+1-limit)) {
		t.Errorf("refused over the limit: %v, want %d", got, max(0, flood+1-limit))
	}
	keys, _ := e.rdb.DBSize(e.ctx()).Result()
	t.Logf("flood of %d bk_connect handled in %v; %d keys in Redis (nonces expire within a minute)", flood, took.Round(time.Millisecond), keys)
	t.Logf("honest connect p50/p99: quiet %v/%v, flood %v/%v (%d rounds)",
		percentile(quietConn, .5), percentile(quietConn, .99), percentile(floodConn, .5), percentile(floodConn, .99), len(floodConn))
	t.Logf("honest ack p50/p99: quiet %v/%v, flood %v/%v",
		percentile(quietAck, .5), percentile(quietAck, .99), percentile(floodAck, .5), percentile(floodAck, .99))
	// Loose, for a shared machine: the flood must not make honest clients
	// wait on it.
	for _, tc := range []struct {
		what         string
		quiet, flood []time.Duration
	}{{"connect", quietConn, floodConn}, {"ack", quietAck, floodAck}} {
		if q, f := percentile(tc.quiet, .99), percentile(tc.flood, .99); f > 4*q+50*time.Millisecond {
			t.Errorf("honest %s p99 %v during the flood, %v without", tc.what, f, q)
		}
	}
}
