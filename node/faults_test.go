package node_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"
)

func (n *testNode) readyz() int {
	resp, err := http.Get(n.url("/readyz"))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// sendUntil sends a message with a fresh id until the answer is want,
// skipping broadcasts, and returns how many tries it took.
func (c *wsClient) sendUntil(t *testing.T, want string, id *int) {
	t.Helper()
	eventually(t, "answer "+want, func() bool {
		*id++
		c.send(fmt.Sprintf(`{"event":"dmb:message","data":"probe","id":%d}`, *id))
		for {
			f := c.next()
			if f.Event != "dmb:ack" && f.Event != "dmb:error" {
				continue
			}
			if string(f.ID) != fmt.Sprint(*id) {
				continue
			}
			return f.Event == want || f.Error == want
		}
	})
}

func TestRedisRestartUnderLoadHealsWithoutRestartingDMB(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	b := e.startBackend("chat")
	var clients []*wsClient
	for i := range 6 {
		clients = append(clients, connect(t, nodes[i%2], "chat").welcome())
	}

	// Load: the backend broadcasts without pause for the whole test.
	ctx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	load.Add(1)
	go func() {
		defer load.Done()
		for ctx.Err() == nil {
			_ = b.Broadcast(ctx, "load")
			select {
			case <-ctx.Done():
			case <-time.After(time.Millisecond):
			}
		}
	}()
	defer func() { stopLoad(); load.Wait() }()

	id := 0
	var goroutines int
	var heap uint64
	const cycles = 6
	for cycle := range cycles {
		e.redis.Kill()
		for _, n := range nodes {
			eventually(t, "readyz 503 while Redis is down", func() bool { return n.readyz() == http.StatusServiceUnavailable })
		}
		clients[0].sendUntil(t, "broker unavailable", &id)
		if cycle == 0 && clients[0].node.metric(`dmb_redis_errors_total{op="uplink"}`) == 0 {
			t.Errorf("uplink failures while Redis is down not counted")
		}

		e.redis.Restart() // empty: the registry is gone too
		for _, n := range nodes {
			eventually(t, "readyz 200 after Redis is back", func() bool { return n.readyz() == http.StatusOK })
		}
		// The backend registers again by itself; traffic resumes both ways
		// for every client, none of which was disconnected.
		for _, c := range clients {
			c.sendUntil(t, "dmb:ack", &id)
		}
		marker := fmt.Sprintf("after-%d", cycle)
		if err := b.Broadcast(context.Background(), marker); err != nil {
			t.Fatalf("broadcast: %v", err)
		}
		for _, c := range clients {
			for string(c.next().Data) != `"`+marker+`"` {
			}
		}
		if cycle == 0 {
			goroutines, heap = runtime.NumGoroutine(), heapInUse()
		}
	}
	// Goroutines and memory do not pile up from cycle to cycle.
	eventually(t, "goroutines back to the first cycle's level", func() bool {
		return runtime.NumGoroutine() <= goroutines+5
	})
	after := heapInUse()
	t.Logf("heap in use after cycle 1: %d kB, after cycle %d: %d kB", heap>>10, cycles, after>>10)
	if after > heap*3/2+4<<20 {
		t.Fatalf("heap grew from %d kB to %d kB over %d Redis restarts", heap>>10, after>>10, cycles)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func TestSubscriptionsDroppedWithRedisUpKeepTheBKIDAndResume(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	b := e.startBackend("chat")
	bkid := b.BKID()
	c := connect(t, nodes[1], "chat").welcome()
	b.next(ofTypeCID("client_connected", c.cid))

	// Every subscriber connection, the nodes' and the backend's, is cut.
	killed, err := e.rdb.ClientKillByFilter(e.ctx(), "TYPE", "pubsub").Result()
	if err != nil || killed < 5 {
		t.Fatalf("killed %d pub/sub connections (%v), want the nodes' and the backend's", killed, err)
	}
	id := 0
	c.sendUntil(t, "dmb:ack", &id)
	if b.BKID() != bkid {
		t.Fatalf("bkid changed from %s to %s although Redis kept the registry", bkid, b.BKID())
	}
	eventually(t, "broadcast after resubscribe", func() bool {
		_ = b.Broadcast(context.Background(), "again")
		for {
			select {
			case f := <-c.frames:
				if string(f.Data) == `"again"` {
					return true
				}
				continue
			case <-time.After(100 * time.Millisecond):
			}
			return false
		}
	})
	for _, n := range nodes {
		if got := n.metric(`dmb_redis_subscription_up_total{subscription="downlink"}`); got < 2 {
			t.Errorf("%s: downlink subscribed %v times, want a resubscribe", n.id, got)
		}
	}
}

// With Redis down, a client that the node cannot admit without asking
// Redis is told that it waits for Redis, not for a backend.
func TestAClientRefusedWhileRedisIsDownIsToldRedisIsUnavailable(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	e.redis.Kill()
	code, reason := refused(t, n.wsURL("chat"), nil)
	if code != 4503 || reason != "redis unavailable" {
		t.Fatalf("refused with %d %q, want 4503 %q", code, reason, "redis unavailable")
	}
}
