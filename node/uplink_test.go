package node_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/dmb-broker/dmb/config"
)

func TestMessageWithIDIsPublishedToTheBackendAndAcked(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:message","data":{"text":"hi"},"id":7}`)
	if f := c.next(); f.Event != "dmb:ack" || string(f.ID) != "7" {
		t.Fatalf("answer = %+v, want dmb:ack id 7", f)
	}
	ev := b.next(ofTypeCID("message", c.cid))
	if string(ev.Data) != `{"text":"hi"}` || string(ev.ID) != "7" {
		t.Fatalf("message = %+v", ev)
	}
	// A string id is echoed as sent; no id means no answer.
	c.send(`{"event":"dmb:message","data":[1,2],"id":"req-1"}`)
	c.send(`{"event":"dmb:message","data":"no id"}`)
	c.send(`{"event":"dmb:message","data":null,"id":8}`)
	if f := c.next(); string(f.ID) != `"req-1"` {
		t.Fatalf("answer = %+v, want ack req-1", f)
	}
	if f := c.next(); string(f.ID) != "8" {
		t.Fatalf("answer = %+v, want ack 8 (no answer for the frame without id)", f)
	}
}

func TestDataIsCarriedByteForByte(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	data := `{"b":1,  "a":[1.50, 2e3, "\u00e9\n"],"z":{}}`
	c.send(`{"event":"dmb:message","data":` + data + `}`)
	if ev := b.next(ofTypeCID("message", c.cid)); string(ev.Data) != data {
		t.Fatalf("data = %s, want %s", ev.Data, data)
	}
}

func TestMessageWithoutLiveBackendGetsBackendUnavailable(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b.next(ofTypeCID("client_connected", c.cid))
	b.stop()
	// The PUBLISH count says at once that nobody listens.
	c.send(`{"event":"dmb:message","data":1,"id":1}`)
	if f := c.next(); f.Event != "dmb:error" || f.Error != "backend unavailable" || string(f.ID) != "1" {
		t.Fatalf("answer = %+v, want backend unavailable for id 1", f)
	}
}

func TestClientMessagesReachTheBackendInOrder(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(noFrameRate) // each client sends 300 frames at once
	b := e.startBackend("chat")
	const clients, each = 8, 300
	cs := make([]*wsClient, clients)
	for i := range cs {
		cs[i] = connect(t, n, "chat").welcome()
	}
	for i := range each {
		for _, c := range cs {
			c.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
		}
	}
	next := map[string]int{}
	for got := 0; got < clients*each; got++ {
		ev := b.next(ofType("message"))
		v, _ := strconv.Atoi(string(ev.Data))
		if v != next[ev.CID] {
			t.Fatalf("client %s: message %d arrived when %d was due", ev.CID, v, next[ev.CID])
		}
		next[ev.CID]++
	}
	for _, c := range cs {
		for i := range each {
			if f := c.next(); f.Event != "dmb:ack" || string(f.ID) != strconv.Itoa(i) {
				t.Fatalf("answer %d = %+v", i, f)
			}
		}
	}
}

func TestUplinkCarriesNoUnexpectedFields(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	raw := e.subscribe(e.ctx(), "dmb:uplink:"+b.BKID())
	defer raw.Close()
	c := connectURL(t, n.wsURL("chat"), nil).welcome()
	c.send(`{"event":"dmb:message","data":{"text":"hi"},"id":7,"extra":"ignored"}`)
	want := []string{
		`{"type":"client_connected","cid":"` + c.cid + `","service":"chat","remote":"127.0.0.1"}`,
		`{"type":"message","cid":"` + c.cid + `","data":{"text":"hi"},"id":7}`,
	}
	for _, w := range want {
		msg, err := raw.ReceiveMessage(e.ctx())
		if err != nil {
			t.Fatal(err)
		}
		if msg.Payload != w {
			t.Fatalf("uplink payload\n got %s\nwant %s", msg.Payload, w)
		}
		if !json.Valid([]byte(msg.Payload)) {
			t.Fatalf("not JSON: %s", msg.Payload)
		}
	}
}

// A flood of client messages to one backend is bounded by what the node
// publishes to it: the excess is answered "backend busy", and the backend
// gets exactly what was acked.
func TestMessagesOverTheBackendRateAreAnsweredBackendBusy(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(noFrameRate, func(c *config.Config) { c.BackendRate = 40; c.UplinkWorkers = 1 })
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	const sent = 200
	for i := range sent {
		c.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
	}
	acked, busy := 0, 0
	for range sent {
		switch f := c.next(); {
		case f.Event == "dmb:ack":
			acked++
		case f.Event == "dmb:error" && f.Error == "backend busy":
			busy++
		default:
			t.Fatalf("answer %+v", f)
		}
	}
	// A burst of a second's worth, and what the rate refilled meanwhile.
	if busy == 0 || acked < 40 || acked > 80 {
		t.Fatalf("%d acked and %d busy of %d, want about 40 acked", acked, busy, sent)
	}
	b.caughtUp()
	got := 0
	for _, ev := range b.held {
		if ev.Type == "message" {
			got++
		}
	}
	if got != acked {
		t.Fatalf("the backend got %d messages, %d were acked", got, acked)
	}
	if m := n.metric(`dmb_drops_total{reason="backend_busy"}`); int(m) != busy {
		t.Fatalf("backend_busy drops counted %v, want %d", m, busy)
	}
}
