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
	const cycles = 4
	for cycle := range cycles {
		e.redis.Kill()
		for _, n := range nodes {
			eventually(t, "readyz 503 while Redis is down", func() bool { return n.readyz() == http.StatusServiceUnavailable })
		}
		clients[0].sendUntil(t, "broker unavailable", &id)

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
			goroutines = runtime.NumGoroutine()
		}
	}
	// Goroutines do not pile up from cycle to cycle.
	eventually(t, "goroutines back to the first cycle's level", func() bool {
		return runtime.NumGoroutine() <= goroutines+5
	})
}
