package node_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/config"
)

func TestSlowConsumerIsClosedWith4008AndOthersGetEverything(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.SendQueue = 8 })
	b := e.startBackend("chat")
	fast := connect(t, n, "chat").welcome()
	slow := dialRaw(t, n.wsURL("chat"), nil) // never reads
	// Enough data to fill the socket buffers of the client that never reads,
	// then its queue.
	const count = 400
	big := strings.Repeat("x", 60<<10)
	for i := range count {
		b.publish(t, fmt.Sprintf(`{"type":"broadcast","data":{"i":%d,"pad":"%s"}}`, i, big))
	}
	for i := range count {
		f := fast.next()
		if !strings.HasPrefix(string(f.Data), fmt.Sprintf(`{"i":%d,`, i)) {
			t.Fatalf("fast client: frame %d = %.40s", i, f.Data)
		}
	}
	ev := b.next(ofType("client_disconnected"))
	if ev.Code != 4008 {
		t.Fatalf("client_disconnected = %+v, want 4008", ev)
	}
	if n.metric(`dmb_drops_total{reason="slow_consumer"}`) < 1 {
		t.Fatalf("slow consumer not counted")
	}
	_ = slow
}
