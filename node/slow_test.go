package node_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
)

// dialNeverReading opens a WebSocket with a tiny receive buffer and never
// reads from it: the node's writes to it stall after a few frames.
func dialNeverReading(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := &net.Dialer{Control: smallReceiveBuffer}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// smallReceiveBuffer is a net.Dialer's Control that gives the socket a
// receive buffer of 4 kB, which a client that never reads soon fills.
func smallReceiveBuffer(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	})
	if err != nil {
		return err
	}
	return serr
}

func TestSlowConsumerIsClosedWith4008AndOthersGetEverything(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) {
		c.SendQueue = 32
		// The writer is blocked on the stalled socket when the queue
		// overflows; the close follows when that write times out.
		c.WriteTimeout = time.Second
	})
	b := e.startBackend("chat")
	fast := connect(t, n, "chat").welcome()
	dialNeverReading(t, n.wsURL("chat"))
	// Enough to fill the socket buffers of the client that never reads
	// (about 100 kB with its 4 kB receive buffer), then its queue of 32.
	// The client that reads is never more than window frames behind, half
	// its queue, however slow the machine: it must not be closed.
	const count, window = 300, 16
	big := strings.Repeat("x", 16<<10)
	read := 0
	readOne := func() {
		t.Helper()
		f := fast.next()
		if !strings.HasPrefix(string(f.Data), fmt.Sprintf(`{"i":%d,`, read)) {
			t.Fatalf("fast client: frame %d = %.40s", read, f.Data)
		}
		read++
	}
	for i := range count {
		b.publish(t, fmt.Sprintf(`{"type":"broadcast","data":{"i":%d,"pad":"%s"}}`, i, big))
		if i >= window {
			readOne()
		}
	}
	for read < count {
		readOne()
	}
	ev := b.next(ofType("client_disconnected"))
	if ev.Code != 4008 {
		t.Fatalf("client_disconnected = %+v, want 4008", ev)
	}
	if n.metric(`dmb_drops_total{reason="slow_consumer"}`) < 1 {
		t.Fatalf("slow consumer not counted")
	}
	// The fast client is still connected and served.
	b.publish(t, `{"type":"broadcast","data":"after"}`)
	if f := fast.next(); string(f.Data) != `"after"` {
		t.Fatalf("fast client after the slow one was closed: %+v", f)
	}
}
