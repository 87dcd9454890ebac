package node_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/node"
)

// TestSoak runs two nodes on one Redis for DMB_TEST_SOAK (a duration, such
// as 10m; the test is skipped without it) through rounds of client churn,
// floods of every kind, Redis restarts and node drains, while a backend
// broadcasts and honest clients, moving to the other node when theirs
// drains, send messages. It ends with both nodes serving, the honest
// clients' messages acked, and the process's goroutines and heap back near
// where they were after the start.
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("DMB_TEST_SOAK"))
	if err != nil {
		t.Skip("set DMB_TEST_SOAK to a duration to run the soak test")
	}
	e := newEnv(t)
	limits := func(c *config.Config) {
		c.SendQueueBytes = 1 << 20
		c.MaxBackendBytes = 256 << 10
		c.FrameTimeout = time.Second
		c.HandshakeTimeout = time.Second
	}
	nodes := [2]*soakNode{startSoakNode(t, e, limits), startSoakNode(t, e, limits)}
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	chat := startCountingBackend(t, e, ctx, "chat")
	big := startCountingBackend(t, e, ctx, "big")

	var mu sync.Mutex // guards nodes while a drained one is replaced
	node := func(i int) *soakNode {
		mu.Lock()
		defer mu.Unlock()
		return nodes[i%2]
	}
	runtime.GC()
	goroutines, heap := runtime.NumGoroutine(), heapInUse()

	var bg sync.WaitGroup
	soak, stop := context.WithCancel(ctx)
	bg.Go(func() { // broadcasts, live only: some are lost while Redis restarts
		for soak.Err() == nil {
			_ = chat.Broadcast(soak, "tick")
			sleepCtx(soak, 100*time.Millisecond)
		}
	})
	var acked, sent atomic.Int64
	for i := range 20 { // honest clients, each reconnecting when closed
		bg.Go(func() { honestLoop(soak, node, i, &sent, &acked) })
	}

	end := time.Now().Add(d)
	for round := 0; time.Now().Before(end); round++ {
		n := node(round)
		t.Logf("round %d: %d goroutines, heap %d MB, %d of %d honest messages acked", round,
			runtime.NumGoroutine(), heapInUse()>>20, acked.Load(), sent.Load())
		floods, stopFloods := context.WithTimeout(soak, 5*time.Second)
		var attackers sync.WaitGroup
		for range 2 {
			attackers.Go(func() { floodFrames(floods, n.wsURL("chat")) })
		}
		for range 20 {
			attackers.Go(func() { halfFrame(floods, n.Addr().String()) })
			attackers.Go(func() { trickle(floods, n.Addr().String()) })
			attackers.Go(func() { // churn: connect, read the welcome, leave
				if c, _, err := websocket.Dial(floods, n.wsURL("chat"), nil); err == nil {
					_, _, _ = c.Read(floods)
					_ = c.Close(websocket.StatusNormalClosure, "")
				}
			})
			attackers.Go(func() { // a client that never reads, under large broadcasts
				if c, _, err := websocket.Dial(floods, n.wsURL("big"), nil); err == nil {
					<-floods.Done()
					_ = c.CloseNow()
				}
			})
		}
		attackers.Go(func() {
			for floods.Err() == nil {
				_ = big.Broadcast(floods, strings.Repeat("x", 100<<10))
				sleepCtx(floods, 50*time.Millisecond)
			}
		})
		attackers.Wait()
		stopFloods()
		switch round % 6 {
		case 2:
			t.Logf("round %d: Redis restarts", round)
			e.redis.Kill()
			e.redis.Restart()
			// The backends register again by themselves; wait for them.
			waitReady(t, ctx, node(0), node(1))
		case 5:
			t.Logf("round %d: a node drains and a new one takes its place", round)
			mu.Lock()
			old := nodes[round%2]
			mu.Unlock()
			old.Drain()
			if err := old.Wait(); err != nil {
				t.Errorf("drained node: %v", err)
			}
			fresh := startSoakNode(t, e, limits)
			mu.Lock()
			nodes[round%2] = fresh
			mu.Unlock()
		}
	}
	stop()
	bg.Wait()

	if acked.Load() == 0 || sent.Load()-acked.Load() > sent.Load()/10 {
		t.Errorf("%d of %d honest messages acked", acked.Load(), sent.Load())
	}
	for i := range 2 {
		c := connectURL(t, node(i).wsURL("chat"), nil).welcome()
		c.send(`{"event":"dmb:message","data":"last","id":"last"}`)
		if f := c.nextEvent("dmb:ack"); string(f.ID) != `"last"` {
			t.Fatalf("node %d after the soak: %+v", i, f)
		}
		_ = c.conn.Close(websocket.StatusNormalClosure, "")
	}
	deadline := time.Now().Add(time.Minute)
	for {
		g, h := runtime.NumGoroutine(), heapInUse()
		if g <= goroutines+20 && h <= heap+32<<20 {
			t.Logf("after %v: goroutines %d -> %d, heap %d -> %d MB", d, goroutines, g, heap>>20, h>>20)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the soak: %d goroutines (%d at the start), heap %d MB (%d)", g, goroutines, h>>20, heap>>20)
		}
		sleepCtx(ctx, 200*time.Millisecond) // a poll with a deadline
	}
}

// honestLoop is an honest client: it connects to node(i), then node(i+1)
// when that fails, sends a message a second and counts its acks, until
// ctx ends.
func honestLoop(ctx context.Context, node func(int) *soakNode, i int, sent, acked *atomic.Int64) {
	for k := i; ctx.Err() == nil; k++ {
		c, _, err := websocket.Dial(ctx, node(k).wsURL("chat"), nil)
		if err != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		reads := make(chan string, 64)
		go func() {
			defer close(reads)
			for {
				_, data, err := c.Read(ctx)
				if err != nil {
					return
				}
				reads <- string(data)
			}
		}()
		for n := 0; ctx.Err() == nil; n++ {
			id := fmt.Sprintf("h%d-%d-%d", i, k, n)
			if c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":1,"id":"`+id+`"}`)) != nil {
				break
			}
			sent.Add(1)
			if waitAck(ctx, reads, id) {
				acked.Add(1)
			}
			sleepCtx(ctx, time.Second)
		}
		_ = c.CloseNow()
		for range reads {
		}
	}
}

// waitAck reads until the ack of id, an error for it, or the end.
func waitAck(ctx context.Context, reads <-chan string, id string) bool {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-reads:
			if !ok {
				return false
			}
			if strings.Contains(f, `"id":"`+id+`"`) {
				return strings.Contains(f, `"dmb:ack"`)
			}
		case <-timeout:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// waitReady waits until every node answers /readyz.
func waitReady(t *testing.T, ctx context.Context, nodes ...*soakNode) {
	t.Helper()
	for _, n := range nodes {
		for !n.Ready(ctx) {
			if ctx.Err() != nil {
				t.Fatalf("node %s never ready again", n.Addr())
			}
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
}

// sleepCtx waits d or until ctx ends: a pace, not a synchronisation.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// soakNode is a node that the soak starts, drains and forgets: unlike the
// harness's nodes, nothing keeps a drained one until the test ends, so
// that the heap at the end tells what DMB kept.
type soakNode struct {
	*node.Node
	done chan struct{} // closed when Run returns
	err  error         // what Run returned
}

func startSoakNode(t *testing.T, e *env, mutate func(*config.Config)) *soakNode {
	t.Helper()
	cfg := e.baseConfig()
	mutate(&cfg)
	n, err := node.New(cfg, node.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	sn := &soakNode{Node: n, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(sn.done)
		sn.err = n.Run(ctx)
	}()
	// A node still running when the test ends is stopped then; the
	// clean-up holds only the channel, not the node.
	done := sn.done
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
		}
	})
	waitReady(t, context.Background(), sn)
	return sn
}

func (n *soakNode) wsURL(service string) string {
	return "ws://" + n.Addr().String() + "/ws/" + service
}

// Wait waits until the node stops (after a drain) and returns what Run
// returned.
func (n *soakNode) Wait() error {
	select {
	case <-n.done:
		return n.err
	case <-time.After(wait):
		return fmt.Errorf("node %s did not stop", n.Addr())
	}
}
