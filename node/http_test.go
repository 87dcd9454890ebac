package node_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dmb-broker/dmb/config"
)

func dialNoFail(url string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(context.Background(), url, nil)
	return c, err
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("get %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHealthReadyAndMetricsEndpoints(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	if code, _ := get(t, n.url("/healthz")); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	if code, _ := get(t, n.url("/readyz")); code != 200 {
		t.Fatalf("readyz = %d", code)
	}
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:message","data":1,"id":1}`)
	c.nextEvent("dmb:ack")
	b.publish(t, `{"type":"broadcast","data":1}`)
	c.nextEvent("dmb:broadcast")
	// The fan-out counts a delivery once it returns, which may be after
	// the client read it.
	eventually(t, "the broadcast counted", func() bool { return n.metric("dmb_deliveries_total") == 1 })
	_, body := get(t, n.url("/metrics"))
	for _, series := range []string{
		"go_goroutines ",
		`dmb_connections{service="chat"} 1`,
		`dmb_messages_in_total{kind="message"} 1`,
		`dmb_messages_in_total{kind="broadcast"} 1`,
		`dmb_messages_out_total{kind="ack"} 1`,
		`dmb_messages_out_total{kind="broadcast"} 1`,
		`dmb_deliveries_total 1`,
		`dmb_backends_live 1`,
		"dmb_uplink_publish_seconds_bucket",
		"dmb_redis_subscription_up_total",
	} {
		if !strings.Contains(body, series) {
			t.Errorf("metrics lack %q", series)
		}
	}
}

func TestTheNodeServesTheBrowserClientWithCacheHeaders(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	resp, err := http.Get(n.url("/dmb.js"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "export class DMB") ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") ||
		!strings.Contains(resp.Header.Get("Cache-Control"), "max-age") || resp.Header.Get("ETag") == "" {
		t.Fatalf("/dmb.js: %d %v", resp.StatusCode, resp.Header)
	}
	if code, body := get(t, n.url("/dmb.d.ts")); code != 200 || !strings.Contains(body, "class DMB") {
		t.Fatalf("/dmb.d.ts: %d", code)
	}
}

// A request that trickles in, a keep-alive connection left idle, and
// headers over the limit cost the node a bounded time and memory.
func TestSlowIdleAndOversizedRequestsAreCut(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) {
		c.HandshakeTimeout = 500 * time.Millisecond
		c.IdleTimeout = 500 * time.Millisecond
	})
	addr := n.Addr().String()
	closedWithin := func(what string, c net.Conn, d time.Duration) {
		t.Helper()
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(wait))
		_, _ = io.Copy(io.Discard, c)
		if took := time.Since(start); took > d {
			t.Errorf("%s: held for %v, want at most %v", what, took, d)
		}
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	trickled := dial()
	if _, err := io.WriteString(trickled, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a"); err != nil {
		t.Fatal(err)
	}
	closedWithin("headers that never end", trickled, 3*time.Second)

	idle := dial()
	if _, err := io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	closedWithin("an idle keep-alive connection", idle, 3*time.Second)

	big := dial()
	if _, err := io.WriteString(big, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = big.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(big), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 kB of headers: %v, %v; want 431", resp, err)
	}
}
