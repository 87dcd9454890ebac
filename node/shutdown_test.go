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

func TestShutdownFinishesInFlightUplinkPublishesAndAcksThem(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(noFrameRate) // the client sends its frames at once
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	const count = 500
	for i := range count {
		c.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
	}
	// Stop once the node passes frames on, whatever the machine's speed:
	// the first one has reached the backend.
	if ev := b.next(func(ev backendEvent) bool { return ev.CID == c.cid && ev.Type == "message" }); string(ev.Data) != "0" {
		t.Fatalf("first message %s", ev.Data)
	}
	if err := n.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// The backend got an unbroken run of the client's messages, then the
	// disconnect.
	got := 1
	for {
		ev := b.next(func(ev backendEvent) bool { return ev.CID == c.cid && ev.Type != "client_connected" })
		if ev.Type == "client_disconnected" {
			if ev.Code != 1001 {
				t.Fatalf("client_disconnected %+v", ev)
			}
			break
		}
		if string(ev.Data) != strconv.Itoa(got) {
			t.Fatalf("message %s arrived when %d was due", ev.Data, got)
		}
		got++
	}
	// The client got an ack for exactly those, and "broker unavailable" for
	// any it sent after the node stopped passing frames on.
	acked, refused := 0, 0
	for f := range drain(c) {
		switch f.Event {
		case "dmb:ack":
			if string(f.ID) != strconv.Itoa(acked) {
				t.Fatalf("ack %s when %d was due", f.ID, acked)
			}
			acked++
		case "dmb:error":
			if f.Error != "broker unavailable" || string(f.ID) != strconv.Itoa(got+refused) {
				t.Fatalf("error %+v, want broker unavailable for id %d", f, got+refused)
			}
			refused++
		}
	}
	if acked != got {
		t.Fatalf("backend got %d messages, client saw %d acks", got, acked)
	}
	t.Logf("of %d frames: %d delivered and acked, %d refused, %d unread at close", count, got, refused, count-got-refused)
}

// drain returns every frame the client receives until its connection ends.
func drain(c *wsClient) <-chan frame {
	out := make(chan frame)
	go func() {
		defer close(out)
		for {
			select {
			case f := <-c.frames:
				out <- f
				continue
			case <-c.ended:
			}
			for {
				select {
				case f := <-c.frames:
					out <- f
				default:
					return
				}
			}
		}
	}()
	return out
}
