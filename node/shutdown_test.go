package node_test

import (
	"fmt"
	"strconv"
	"testing"
)

func TestShutdownClosesClientsWith1001AndTellsTheirBackends(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	clients := []*wsClient{connect(t, n, "chat").welcome(), connect(t, n, "chat").welcome()}
	for _, c := range clients {
		b.next(ofTypeCID("client_connected", c.cid))
	}
	if err := n.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for _, c := range clients {
		if code, _ := c.closed(); code != 1001 {
			t.Fatalf("close code %d, want 1001", code)
		}
		if ev := b.next(ofTypeCID("client_disconnected", c.cid)); ev.Code != 1001 {
			t.Fatalf("client_disconnected = %+v", ev)
		}
	}
	if code, _ := refusedOrDown(t, n); code != 0 {
		t.Fatalf("node still accepts after shutdown")
	}
}

// refusedOrDown dials a stopped node: the dial itself must fail.
func refusedOrDown(t *testing.T, n *testNode) (int, error) {
	c, err := dialNoFail(n.wsURL("chat"))
	if err != nil {
		return 0, err
	}
	_ = c.CloseNow()
	return 1, nil
}

func TestShutdownFinishesInFlightUplinkPublishes(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	const count = 500
	for i := range count {
		c.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
	}
	if err := n.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// The backend got an unbroken run of the client's messages, then the
	// disconnect; every message the client saw acked is among them.
	got := 0
	for {
		ev := b.next(func(ev backendEvent) bool { return ev.CID == c.cid && ev.Type != "client_connected" })
		if ev.Type == "client_disconnected" {
			break
		}
		if string(ev.Data) != strconv.Itoa(got) {
			t.Fatalf("message %s arrived when %d was due", ev.Data, got)
		}
		got++
	}
	acked := 0
	for {
		select {
		case f := <-c.frames:
			if f.Event == "dmb:ack" {
				acked++
			}
			continue
		case <-c.ended:
		}
		break
	}
	if acked > got || got == 0 {
		t.Fatalf("client saw %d acks, backend got %d messages", acked, got)
	}
	t.Logf("%d of %d messages read before shutdown, %d acks seen", got, count, acked)
}
