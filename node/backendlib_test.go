package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/internal/redistest"
)

// The Go backend library's request helper answers each client message with
// a direct whose reply_to is the message's id.
func TestBackendRequestsReplyWithReplyTo(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	rdb := e.client()
	t.Cleanup(func() { _ = rdb.Close() })
	b := backend.New(rdb, "calc", backend.Options{Logger: testLogger()})
	handler := b.Requests(func(_ context.Context, ev backend.Event) (any, error) {
		var nums []int
		if err := json.Unmarshal(ev.Data, &nums); err != nil {
			return nil, errors.New("want a list of numbers")
		}
		sum := 0
		for _, v := range nums {
			sum += v
		}
		return map[string]int{"sum": sum}, nil
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, handler) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-b.Ready():
	case <-time.After(wait):
		t.Fatal("backend not ready")
	}
	c := connect(t, n, "calc").welcome()
	c.send(`{"event":"dmb:message","data":[1,2,3],"id":"r1"}`)
	c.send(`{"event":"dmb:message","data":"x","id":2}`)
	reply := c.nextEvent("dmb:direct")
	if string(reply.ReplyTo) != `"r1"` || string(reply.Data) != `{"sum":6}` {
		t.Fatalf("reply %+v", reply)
	}
	reply = c.nextEvent("dmb:direct")
	if string(reply.ReplyTo) != "2" || string(reply.Data) != `{"error":"want a list of numbers"}` {
		t.Fatalf("error reply %+v", reply)
	}
}

// The Go backend library's rooms: Join by cid and by user, Room and
// Broadcast with except, LeaveRoom, and Presence gathering the answers of
// two nodes into one result, which the event handler never sees.
func TestBackendLibraryRoomsAndPresence(t *testing.T) {
	e := newEnv(t)
	n1, n2 := e.startNode(withAuth), e.startNode(withAuth)
	b := e.startBackend("chat")
	ctx := e.ctx()
	a := connectURL(t, n1.wsURLToken("chat", token(t, "alice")), nil).welcome()
	c := connectURL(t, n2.wsURLToken("chat", token(t, "carol")), nil).welcome()
	o := connectURL(t, n2.wsURLToken("chat", token(t, "bob")), nil).welcome()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.Join(ctx, "lobby", backend.Target{CID: a.cid}))
	must(b.Join(ctx, "lobby", backend.Target{User: "carol"}))
	must(b.Room(ctx, "lobby", map[string]int{"n": 1}))
	must(b.Room(ctx, "lobby", 2, a.cid))
	must(b.Broadcast(ctx, 3, a.cid, o.cid))
	must(b.Broadcast(ctx, 4))
	a.expect("dmb:joined", "lobby", "")
	a.expect("dmb:room", "lobby", `{"n":1}`)
	a.expect("dmb:broadcast", "", "4")
	c.expect("dmb:joined", "lobby", "")
	c.expect("dmb:room", "lobby", `{"n":1}`)
	c.expect("dmb:room", "lobby", "2")
	c.expect("dmb:broadcast", "", "3")
	c.expect("dmb:broadcast", "", "4")
	o.expect("dmb:broadcast", "", "4")
	if err := b.Join(ctx, "no spaces", backend.Target{CID: a.cid}); err == nil {
		t.Fatal("Join of an invalid room name: no error")
	}
	if err := b.Join(ctx, "lobby", backend.Target{}); err == nil {
		t.Fatal("Join without cid or user: no error")
	}

	eventually(t, "both nodes count 2 nodes", func() bool {
		return n1.metric("dmb_nodes") == 2 && n2.metric("dmb_nodes") == 2
	})
	p, err := b.Presence(ctx, "lobby", backend.PresenceOptions{Timeout: wait})
	must(err)
	slices.SortFunc(p.Members, func(x, y backend.Member) int { return strings.Compare(x.User, y.User) })
	slices.Sort(p.Nodes)
	wantNodes := []string{n1.id, n2.id}
	slices.Sort(wantNodes)
	if !p.Complete || p.Count != 2 || p.Room != "lobby" || !slices.Equal(p.Nodes, wantNodes) ||
		!slices.Equal(p.Members, []backend.Member{{CID: a.cid, User: "alice"}, {CID: c.cid, User: "carol"}}) {
		t.Fatalf("presence of lobby %+v", p)
	}
	p, err = b.Presence(ctx, "", backend.PresenceOptions{CountOnly: true, Timeout: wait})
	must(err)
	if !p.Complete || p.Count != 3 || p.Members != nil || len(p.Nodes) != 2 {
		t.Fatalf("count of the service %+v, want 3 from 2 nodes", p)
	}
	p, err = b.Presence(ctx, "empty", backend.PresenceOptions{Timeout: wait})
	must(err)
	if !p.Complete || p.Count != 0 || p.Members == nil || len(p.Members) != 0 {
		t.Fatalf("presence of an empty room %+v", p)
	}

	must(b.LeaveRoom(ctx, "lobby", backend.Target{CID: c.cid}))
	c.expect("dmb:left", "lobby", "")
	p, err = b.Presence(ctx, "lobby", backend.PresenceOptions{CountOnly: true, Timeout: wait})
	must(err)
	if !p.Complete || p.Count != 1 {
		t.Fatalf("lobby after a leave %+v, want 1", p)
	}
	if _, err := b.Presence(ctx, "a b", backend.PresenceOptions{}); err == nil {
		t.Fatal("Presence of an invalid room name: no error")
	}

	// Every answer went to Presence, none to the handler.
	b.caughtUp()
	for _, ev := range b.held {
		if ev.Type == "presence" {
			t.Fatalf("the handler got a presence answer: %+v", ev)
		}
	}
}

// Presence from inside the event handler gets its answers (they do not
// wait behind the handler), and a presence whose wait ends first is
// incomplete.
func TestBackendLibraryPresenceFromTheHandler(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	rdb := e.client()
	b := backend.New(rdb, "chat", backend.Options{Logger: testLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Run(ctx, func(ctx context.Context, ev backend.Event) {
			if ev.Type != backend.EventMessage {
				return
			}
			p, err := b.Presence(ctx, "", backend.PresenceOptions{CountOnly: true, Timeout: wait})
			if err != nil {
				t.Errorf("Presence: %v", err)
			}
			_ = b.Reply(ctx, ev, p)
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-b.Ready():
	case <-time.After(wait):
		t.Fatal("backend not ready")
	}
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:message","data":"who","id":1}`)
	reply := c.nextEvent("dmb:direct")
	var p backend.PresenceResult
	if err := json.Unmarshal(reply.Data, &p); err != nil || !p.Complete || p.Count != 1 {
		t.Fatalf("presence from the handler %s (%v)", reply.Data, err)
	}

	// A node that beats but does not answer (one that died since its last
	// beat): Presence ends at its timeout, incomplete, with the answers it
	// has.
	ghost := func() {
		now, err := e.rdb.Time(e.ctx()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if err := e.rdb.ZAdd(e.ctx(), "{dmb}:nodes", redis.Z{Score: float64(now.UnixMilli()), Member: "ghost/1"}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ghost()
	eventually(t, "the node counts 2 nodes", func() bool { ghost(); return n.metric("dmb_nodes") == 2 })
	start := time.Now()
	p, err := b.Presence(context.Background(), "", backend.PresenceOptions{Timeout: 300 * time.Millisecond})
	if err != nil || p.Complete || p.Count != 1 || !slices.Equal(p.Nodes, []string{n.id}) {
		t.Fatalf("presence with a node that does not answer: %+v, %v; want incomplete, 1 member, no error", p, err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 5*time.Second {
		t.Fatalf("presence with a node that does not answer took %v, want its timeout", took)
	}
	_ = e.rdb.ZRem(e.ctx(), "{dmb}:nodes", "ghost/1").Err()

	// A wait too short for any answer ends incomplete, without an error.
	start = time.Now()
	p, err = b.Presence(context.Background(), "", backend.PresenceOptions{Timeout: time.Nanosecond})
	if err != nil || p.Complete {
		t.Fatalf("presence cut short: %+v, %v; want incomplete and no error", p, err)
	}
	if time.Since(start) > wait {
		t.Fatalf("presence took %v", time.Since(start))
	}
}

// On a Redis Cluster the library speaks sharded pub/sub: Presence listens
// with SSUBSCRIBE.
func TestBackendLibraryRoomsAndPresenceOnACluster(t *testing.T) {
	topo := clusterTopology(redistest.StartCluster(t, 3, 1))
	currentTopology = topo
	defer func() { currentTopology = nil }()
	TestBackendLibraryRoomsAndPresence(t)
}
