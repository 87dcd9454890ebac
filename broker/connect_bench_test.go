package broker

import (
	"context"
	"testing"

	"github.com/coder/websocket"
)

// BenchmarkConnect measures one client's whole connect over loopback: the
// upgrade, the look-up, dmb:connected, and the close. One op is one client;
// the allocations are the node's and the dialling client's together.
func BenchmarkConnect(b *testing.B) {
	brk := newTestBroker(b)
	srv, addr := serveBroker(b, brk)
	defer func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) }()
	url := "ws://" + addr + "/ws/bench"
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil { // dmb:connected
			b.Fatal(err)
		}
		_ = c.CloseNow()
	}
}
