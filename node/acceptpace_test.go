package node_test

import (
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
)

// The node's accept pace holds for its WebSocket and TCP listeners
// together, and makes clients wait, never refuses them: 8 clients that
// connect one after the other, on each listener in turn, at 5 a second in
// bursts of 1, are all welcomed, the last no sooner than 1.4 s after the
// first (a pace of each listener's own would let them in about twice as
// fast), and those that waited are counted.
func TestTheAcceptPaceHoldsForWebSocketAndTCPTogether(t *testing.T) {
	const (
		rate    = 5
		perKind = 4
	)
	e := newEnv(t)
	n := e.startNode(withTCP(t), func(c *config.Config) { c.AcceptRate = rate })
	e.startBackend("chat")
	connect(t, n, "chat").welcome() // the burst's token, and the node is ready

	start := time.Now()
	for range perKind {
		connect(t, n, "chat").welcome()
		tcpConnect(t, n, "chat", "").welcome()
	}
	elapsed := time.Since(start)
	if want := time.Duration(2*perKind-1) * time.Second / rate; elapsed < want {
		t.Errorf("%d clients connected in %v at %d a second, want at least %v", 2*perKind, elapsed, rate, want)
	}
	// Each client waits, unless its connect took longer than a turn.
	if got := n.metric("dmb_accepts_paced_total"); got < perKind {
		t.Errorf("dmb_accepts_paced_total = %v, want at least %d", got, perKind)
	}
}
