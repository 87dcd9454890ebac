package node_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

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

// Clients that each send at their own bound cannot take the whole of what
// the node may publish to their backend: the last quarter is kept for the
// others, whose messages still get through.
func TestClientsOverHalfTheirBurstLeaveTheBackendsReserveToTheOthers(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) {
		c.BackendRate, c.UplinkWorkers = 100, 1 // a burst of 100, 25 kept
		c.ClientRate, c.ClientBurst = 1, 20     // heavy once 10 are spent
		c.ClientErrorLimit = 1000
	})
	e.startBackend("chat")
	// Every client is over a second old when it sends: in its first
	// second a client is paced, and counts as heavy whatever it sends
	// (broker's tests).
	honest := connect(t, n, "chat").welcome()
	flooders := make([]*wsClient, 5)
	for i := range flooders {
		flooders[i] = connect(t, n, "chat").welcome()
	}
	since := time.Now()
	eventually(t, "the clients a second old", func() bool { return time.Since(since) > time.Second })
	answers := func(c *wsClient, sent int) (acked, busy int) {
		for range sent {
			switch f := c.next(); {
			case f.Event == "dmb:ack":
				acked++
			case f.Event == "dmb:error" && (f.Error == "backend busy" || f.Error == "rate limited"):
				if f.Error == "backend busy" {
					busy++
				}
			default:
				t.Fatalf("answer %+v", f)
			}
		}
		return acked, busy
	}
	// 5 flooders, one after the other, spend their bursts: 10 light
	// messages each, then 10 heavy ones, which the first three get
	// through while the backend's burst lasts, and the last two find
	// nothing above the 25 kept: about 16 are left for others.
	heavyBusy := 0
	for _, c := range flooders {
		for i := range 20 {
			c.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
		}
		_, busy := answers(c, 20)
		heavyBusy += busy
	}
	if heavyBusy == 0 {
		t.Fatal("no flooder's message was answered backend busy")
	}
	for i := range 8 {
		honest.send(fmt.Sprintf(`{"event":"dmb:message","data":%d,"id":%d}`, i, i))
	}
	if acked, _ := answers(honest, 8); acked != 8 {
		t.Fatalf("the honest client got %d of 8 messages acked", acked)
	}
}
