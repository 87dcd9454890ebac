package node_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
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
