package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/pubsub"
)

func (b *testBackend) publish(t *testing.T, payload string) {
	t.Helper()
	if err := pubsub.Publish(context.Background(), b.rdb, pubsub.Sharded(b.rdb), "dmb:"+b.BKID(), payload).Err(); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func TestBroadcastReachesEveryClientOfTheServiceOnEveryNode(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode(), e.startNode()}
	b := e.startBackend("chat")
	e.startBackend("games")
	var chat []*wsClient
	for _, n := range nodes {
		chat = append(chat, connect(t, n, "chat").welcome(), connect(t, n, "chat").welcome())
	}
	games := connect(t, nodes[0], "games").welcome()
	b.publish(t, `{"type":"broadcast","data":{"n":1}}`)
	for _, c := range chat {
		if f := c.next(); f.Event != "dmb:broadcast" || string(f.Data) != `{"n":1}` {
			t.Fatalf("frame = %+v", f)
		}
	}
	// The other service's client got nothing: the next thing it sees is its
	// own ack.
	games.send(`{"event":"dmb:message","data":0,"id":1}`)
	if f := games.next(); f.Event != "dmb:ack" {
		t.Fatalf("games client got %+v, want only its ack", f)
	}
}

func TestDirectReachesOneClientWithReplyTo(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	b := e.startBackend("chat")
	target := connect(t, nodes[1], "chat").welcome()
	other := connect(t, nodes[0], "chat").welcome()
	b.publish(t, `{"type":"direct","cid":"`+target.cid+`","data":"for you","reply_to":7}`)
	b.publish(t, `{"type":"direct","cid":"`+target.cid+`","data":"plain"}`)
	if f := target.next(); f.Event != "dmb:direct" || string(f.Data) != `"for you"` || string(f.ReplyTo) != "7" {
		t.Fatalf("frame = %+v", f)
	}
	if f := target.next(); string(f.Data) != `"plain"` || f.ReplyTo != nil {
		t.Fatalf("frame = %+v, want no reply_to", f)
	}
	other.send(`{"event":"dmb:message","data":0,"id":1}`)
	if f := other.next(); f.Event != "dmb:ack" {
		t.Fatalf("other client got %+v", f)
	}
}

func TestKickClosesTheClientWith4009AndTheBackendsReason(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b.publish(t, `{"type":"direct","cid":"`+c.cid+`","data":"last words"}`)
	if err := b.Kick(context.Background(), c.cid, "banned"); err != nil {
		t.Fatal(err)
	}
	if f := c.next(); string(f.Data) != `"last words"` {
		t.Fatalf("frame before kick = %+v", f)
	}
	if code, reason := c.closed(); code != 4009 || reason != "banned" {
		t.Fatalf("close = %d %q, want 4009 banned", code, reason)
	}
	ev := b.next(ofTypeCID("client_disconnected", c.cid))
	if ev.Code != 4009 {
		t.Fatalf("client_disconnected = %+v", ev)
	}
}

func TestDirectOrKickToAClientOfAnotherServiceIsNotDelivered(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	chat := e.startBackend("chat")
	e.startBackend("games")
	victim := connect(t, n, "games").welcome()
	chat.publish(t, `{"type":"direct","cid":"`+victim.cid+`","data":"x","id":"d1"}`)
	chat.publish(t, `{"type":"kick","cid":"`+victim.cid+`","reason":"x","id":"k1"}`)
	for _, id := range []string{`"d1"`, `"k1"`} {
		ack := chat.next(ofType("bk_message_ack"))
		if string(ack.ID) != id || ack.Delivered != 0 {
			t.Fatalf("ack = %+v, want %s delivered 0", ack, id)
		}
	}
	victim.send(`{"event":"dmb:message","data":0,"id":1}`)
	if f := victim.next(); f.Event != "dmb:ack" {
		t.Fatalf("games client got %+v, want only its ack", f)
	}
}

func TestEveryNodeAcksAMessageWithIDWithItsDeliveredCount(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	b := e.startBackend("chat")
	for range 3 {
		connect(t, nodes[0], "chat").welcome()
	}
	one := connect(t, nodes[1], "chat").welcome()
	b.publish(t, `{"type":"broadcast","data":1,"id":"m-9"}`)
	got := map[string]int{}
	for range 2 {
		ack := b.next(ofType("bk_message_ack"))
		if string(ack.ID) != `"m-9"` {
			t.Fatalf("ack = %+v", ack)
		}
		got[ack.Node] = ack.Delivered
	}
	if got[nodes[0].id] != 3 || got[nodes[1].id] != 1 {
		t.Fatalf("acks = %v, want %s:3 %s:1", got, nodes[0].id, nodes[1].id)
	}
	b.publish(t, `{"type":"direct","cid":"`+one.cid+`","data":1,"id":5}`)
	got = map[string]int{}
	for range 2 {
		ack := b.next(ofType("bk_message_ack"))
		got[ack.Node] = ack.Delivered
	}
	if got[nodes[0].id] != 0 || got[nodes[1].id] != 1 {
		t.Fatalf("direct acks = %v, want 0 and 1", got)
	}
}

func TestMessagesOfOneBackendReachAClientInPublishOrder(t *testing.T) {
	e := newEnv(t)
	// The burst is published at once: a send queue that holds all of it
	// keeps the test about order, whatever the speed of the test's reader.
	bigQueue := func(c *config.Config) { c.SendQueue = 4096 }
	nodes := []*testNode{e.startNode(bigQueue), e.startNode(bigQueue)}
	b := e.startBackend("chat")
	c1 := connect(t, nodes[0], "chat").welcome()
	c2 := connect(t, nodes[1], "chat").welcome()
	const count = 2000
	pipe := b.rdb.Pipeline()
	sharded := pubsub.Sharded(b.rdb)
	for i := range count {
		if i%3 == 0 {
			pubsub.Publish(context.Background(), pipe, sharded, "dmb:"+b.BKID(), fmt.Sprintf(`{"type":"direct","cid":"%s","data":%d}`, c1.cid, i))
		} else {
			pubsub.Publish(context.Background(), pipe, sharded, "dmb:"+b.BKID(), fmt.Sprintf(`{"type":"broadcast","data":%d}`, i))
		}
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*wsClient{c1, c2} {
		last := -1
		for i := range count {
			if c == c2 && i%3 == 0 {
				continue
			}
			v, _ := strconv.Atoi(string(c.next().Data))
			if v <= last {
				t.Fatalf("client got %d after %d", v, last)
			}
			last = v
		}
	}
}

// The ack goes out only after every node can resolve the new bkid: a
// message published right after the ack reaches the clients of every node.
func TestNoGapAfterTheAck(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode(), e.startNode()}
	e.startBackend("chat") // makes the service live so clients can connect
	var clients []*wsClient
	for _, n := range nodes {
		clients = append(clients, connect(t, n, "chat").welcome())
	}
	ctx := e.ctx()
	for round := range 20 {
		nonce := newNonce()
		ps := e.subscribe(ctx, "dmb:register:"+nonce)
		req, _ := json.Marshal(map[string]string{"type": "bk_connect", "nonce": nonce, "service": "chat"})
		if err := e.publish(ctx, "dmb:register", string(req)); err != nil {
			t.Fatal(err)
		}
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = ps.Close()
		var a answer
		_ = json.Unmarshal([]byte(msg.Payload), &a)
		// Publish at once, before anything else happens.
		if err := e.publish(ctx, a.Downlink, fmt.Sprintf(`{"type":"broadcast","data":%d}`, round)); err != nil {
			t.Fatal(err)
		}
		for i, c := range clients {
			if f := c.next(); string(f.Data) != strconv.Itoa(round) {
				t.Fatalf("round %d: client on node %d got %+v", round, i, f)
			}
		}
	}
	_ = time.Second
}
