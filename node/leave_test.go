package node_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
)

func TestAForgedLeaveIsToldToTheBackendAndHealsAtTheNextLivenessCheck(t *testing.T) {
	e := newEnv(t)
	var timeout time.Duration
	n := e.startNode(func(c *config.Config) { timeout = c.BackendTimeout })
	// A backend in another language that does nothing about the notice:
	// it registers, listens on its uplink, and no more.
	a := e.register([]*testNode{n}, "chat", "")
	uplink := e.subscribe(e.ctx(), a.Uplink)
	defer uplink.Close()
	c := connect(t, n, "chat").welcome()
	nextOnUplink := func(typ string) map[string]any {
		t.Helper()
		for {
			msg, err := uplink.ReceiveMessage(e.ctx())
			if err != nil {
				t.Fatalf("uplink: %v", err)
			}
			var ev map[string]any
			if err := json.Unmarshal([]byte(msg.Payload), &ev); err != nil {
				t.Fatalf("uplink event %q: %v", msg.Payload, err)
			}
			if ev["type"] == typ {
				return ev
			}
		}
	}
	nextOnUplink("client_connected")

	// Someone else on Redis says the backend left; it did not.
	left := time.Now()
	if err := e.publish(e.ctx(), "dmb:register", `{"type":"bk_disconnect","bkid":"`+a.BKID+`"}`); err != nil {
		t.Fatal(err)
	}
	if ev := nextOnUplink("bk_disconnected"); ev["bkid"] != a.BKID {
		t.Fatalf("bk_disconnected = %v", ev)
	}
	// Its uplink is still subscribed, so the next liveness check (every
	// half DMB_BACKEND_TIMEOUT) makes it live again, and clients connect.
	eventually(t, "the backend live again", func() bool { return outcome(t, n.wsURL("chat")) == 0 })
	if took := time.Since(left); took > timeout {
		t.Errorf("live again after %v, want within the liveness interval (%v) and its check", took, timeout/2)
	}
	if got := n.metric(`dmb_backend_leaves_total{result="back"}`); got != 1 {
		t.Errorf("returns counted: %v, want 1", got)
	}
	if got := n.metric(`dmb_backend_leaves_total{result="left"}`); got != 1 {
		t.Errorf("leaves counted: %v, want 1", got)
	}
	c.send(`{"event":"dmb:message","data":1,"id":1}`)
	if f := c.nextEvent("dmb:ack"); string(f.ID) != "1" {
		t.Fatalf("ack = %+v", f)
	}
	if ev := nextOnUplink("message"); ev["cid"] != c.cid {
		t.Fatalf("message = %v", ev)
	}
}

func TestTheGoBackendLibraryRegistersAgainAfterALeaveItDidNotSend(t *testing.T) {
	e := newEnv(t)
	// No liveness check comes during the test: the library's registration
	// alone brings the backend back.
	n := e.startNode(func(c *config.Config) { c.BackendTimeout = time.Minute })
	b := e.startBackend("chat")
	if err := e.publish(e.ctx(), "dmb:register", `{"type":"bk_disconnect","bkid":"`+b.BKID()+`"}`); err != nil {
		t.Fatal(err)
	}
	b.next(ofType("bk_disconnected"))
	if code := outcome(t, n.wsURL("chat")); code != 0 {
		t.Fatalf("a client after the backend registered again: %d, want accepted", code)
	}
	// Its own leave is final.
	if err := b.Leave(e.ctx()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "4503 after the backend's own leave", func() bool { return outcome(t, n.wsURL("chat")) == 4503 })
}
