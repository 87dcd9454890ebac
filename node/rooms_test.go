package node_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
)

// command publishes a downlink payload as a backend in any language would.
func (b *testBackend) command(e *env, payload string) {
	b.t.Helper()
	if err := e.publish(e.ctx(), "dmb:"+b.BKID(), payload); err != nil {
		b.t.Fatalf("publish %s: %v", payload, err)
	}
}

// acks returns the bk_message_ack of id from each of n nodes, summed.
func (b *testBackend) acks(id string, n int) int {
	b.t.Helper()
	sum := 0
	for range n {
		sum += b.next(func(ev backend.Event) bool { return ev.Type == "bk_message_ack" && string(ev.ID) == `"`+id+`"` }).Delivered
	}
	return sum
}

// expect reads the client's next frame and checks its event, room and
// data.
func (c *wsClient) expect(event, room, data string) {
	c.t.Helper()
	f := c.next()
	if f.Event != event || f.Room != room || data != "" && string(f.Data) != data {
		c.t.Fatalf("frame %+v (data %s), want %s room %q data %s", f, f.Data, event, room, data)
	}
}

func TestRoomsJoinLeaveAndMessagesAcrossNodes(t *testing.T) {
	e := newEnv(t)
	n1, n2 := e.startNode(), e.startNode()
	b := e.startBackend("chat")
	a := connect(t, n1, "chat").welcome()
	c := connect(t, n2, "chat").welcome()
	outsider := connect(t, n2, "chat").welcome()
	b.command(e, fmt.Sprintf(`{"type":"join","room":"lobby","cid":%q,"id":"j1"}`, a.cid))
	b.command(e, fmt.Sprintf(`{"type":"join","room":"lobby","cid":%q,"id":"j2"}`, c.cid))
	if got := b.acks("j1", 2) + b.acks("j2", 2); got != 2 {
		t.Fatalf("joins changed %d clients, want 2", got)
	}
	a.expect("dmb:joined", "lobby", "")
	c.expect("dmb:joined", "lobby", "")
	b.command(e, `{"type":"room","room":"lobby","data":{"n":1},"id":"r1"}`)
	a.expect("dmb:room", "lobby", `{"n":1}`)
	c.expect("dmb:room", "lobby", `{"n":1}`)
	if got := b.acks("r1", 2); got != 2 {
		t.Fatalf("room message reached %d, want 2", got)
	}
	// except on room and on broadcast.
	b.command(e, fmt.Sprintf(`{"type":"room","room":"lobby","data":2,"except":[%q]}`, a.cid))
	c.expect("dmb:room", "lobby", `2`)
	b.command(e, fmt.Sprintf(`{"type":"broadcast","data":3,"except":[%q,%q]}`, a.cid, outsider.cid))
	c.expect("dmb:broadcast", "", `3`)
	b.command(e, fmt.Sprintf(`{"type":"leave","room":"lobby","cid":%q,"id":"l1"}`, c.cid))
	if got := b.acks("l1", 2); got != 1 {
		t.Fatalf("leave changed %d clients, want 1", got)
	}
	c.expect("dmb:left", "lobby", "")
	b.command(e, `{"type":"room","room":"lobby","data":4}`)
	b.command(e, `{"type":"broadcast","data":5}`)
	// a missed the except'ed ones; c is out of the room; the outsider
	// never was in it.
	a.expect("dmb:room", "lobby", `4`)
	a.expect("dmb:broadcast", "", `5`)
	c.expect("dmb:broadcast", "", `5`)
	outsider.expect("dmb:broadcast", "", `5`)
}

func TestMessagesOfOneBackendKeepTheirOrderAcrossKinds(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b.command(e, `{"type":"broadcast","data":1}`)
	b.command(e, fmt.Sprintf(`{"type":"join","room":"r","cid":%q}`, c.cid))
	b.command(e, `{"type":"room","room":"r","data":2}`)
	b.command(e, fmt.Sprintf(`{"type":"direct","cid":%q,"data":3}`, c.cid))
	b.command(e, fmt.Sprintf(`{"type":"leave","room":"r","cid":%q}`, c.cid))
	b.command(e, `{"type":"room","room":"r","data":"never"}`)
	b.command(e, `{"type":"broadcast","data":4}`)
	c.expect("dmb:broadcast", "", "1")
	c.expect("dmb:joined", "r", "")
	c.expect("dmb:room", "r", "2")
	c.expect("dmb:direct", "", "3")
	c.expect("dmb:left", "r", "")
	c.expect("dmb:broadcast", "", "4")
}

func TestJoinByUserReachesEveryConnectionOfTheUser(t *testing.T) {
	e := newEnv(t)
	n1, n2 := e.startNode(withAuth), e.startNode(withAuth)
	b := e.startBackend("chat")
	tok := token(t, "alice")
	tabs := []*wsClient{
		connectURL(t, n1.wsURLToken("chat", tok), nil).welcome(),
		connectURL(t, n2.wsURLToken("chat", tok), nil).welcome(),
	}
	bob := connectURL(t, n1.wsURLToken("chat", token(t, "bob")), nil).welcome()
	b.command(e, `{"type":"join","room":"team","user":"alice","id":"j"}`)
	if got := b.acks("j", 2); got != 2 {
		t.Fatalf("join by user changed %d connections, want 2", got)
	}
	b.command(e, `{"type":"room","room":"team","data":"hi"}`)
	b.command(e, `{"type":"broadcast","data":"all"}`)
	for _, c := range tabs {
		c.expect("dmb:joined", "team", "")
		c.expect("dmb:room", "team", `"hi"`)
	}
	bob.expect("dmb:broadcast", "", `"all"`)
}

func TestClientsJoinTheRoomsTheirTokenAllows(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withAuth)
	b := e.startBackend("chat")
	tok, err := auth.MintRooms(jwtSecret, "alice", time.Minute, []string{"game-*"})
	if err != nil {
		t.Fatal(err)
	}
	c := connectURL(t, n.wsURLToken("chat", tok), nil).welcome()
	b.next(ofTypeCID("client_connected", c.cid))
	c.send(`{"event":"dmb:join","room":"game-7","id":1}`)
	c.expect("dmb:joined", "game-7", "")
	if f := c.next(); f.Event != "dmb:ack" || string(f.ID) != "1" {
		t.Fatalf("answer to a join %+v, want dmb:ack 1", f)
	}
	ev := b.next(ofTypeCID("room_joined", c.cid))
	if ev.Room != "game-7" || ev.User != "alice" {
		t.Fatalf("room_joined %+v", ev)
	}
	b.command(e, `{"type":"room","room":"game-7","data":"move"}`)
	c.expect("dmb:room", "game-7", `"move"`)
	c.send(`{"event":"dmb:join","room":"admin","id":2}`)
	if f := c.next(); f.Event != "dmb:error" || f.Error != "not allowed" || string(f.ID) != "2" {
		t.Fatalf("answer to a join outside the token's rooms %+v", f)
	}
	c.send(`{"event":"dmb:leave","room":"game-7","id":3}`)
	c.expect("dmb:left", "game-7", "")
	if f := c.next(); f.Event != "dmb:ack" {
		t.Fatalf("answer to a leave %+v", f)
	}
	if ev := b.next(ofTypeCID("room_left", c.cid)); ev.Room != "game-7" {
		t.Fatalf("room_left %+v", ev)
	}
	if got := n.metric(`dmb_drops_total{reason="not_allowed"}`); got != 1 {
		t.Fatalf("not_allowed drops %v, want 1", got)
	}
}

func TestAClientWithoutRoomsInItsTokenMayNotJoin(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:join","room":"lobby","id":1}`)
	if f := c.next(); f.Event != "dmb:error" || f.Error != "not allowed" {
		t.Fatalf("answer %+v, want not allowed", f)
	}
	c.send(`{"event":"dmb:join","room":"no spaces","id":2}`)
	if f := c.next(); f.Event != "dmb:error" || f.Error != "invalid room name" {
		t.Fatalf("answer %+v, want invalid room name", f)
	}
}

// presence asks for presence and returns each node's answer.
func (b *testBackend) presence(e *env, payload, id string, nodes int) []backend.Event {
	b.t.Helper()
	b.command(e, payload)
	var out []backend.Event
	for range nodes {
		out = append(out, b.next(func(ev backend.Event) bool { return ev.Type == "presence" && string(ev.ID) == `"`+id+`"` }))
	}
	return out
}

func TestPresenceAnswersFromEveryNodeAndLeavesWithTheSession(t *testing.T) {
	e := newEnv(t)
	n1, n2 := e.startNode(withAuth), e.startNode(withAuth)
	b := e.startBackend("chat")
	a := connectURL(t, n1.wsURLToken("chat", token(t, "alice")), nil).welcome()
	c := connectURL(t, n2.wsURLToken("chat", token(t, "carol")), nil).welcome()
	for _, cl := range []*wsClient{a, c} {
		b.command(e, fmt.Sprintf(`{"type":"join","room":"lobby","cid":%q}`, cl.cid))
		cl.expect("dmb:joined", "lobby", "")
	}
	// Each node counts the others from their heartbeats.
	eventually(t, "both nodes count 2 nodes", func() bool {
		return n1.metric("dmb_nodes") == 2 && n2.metric("dmb_nodes") == 2
	})
	var members []backend.Member
	for _, ans := range b.presence(e, `{"type":"presence","room":"lobby","id":"p1"}`, "p1", 2) {
		if ans.Nodes != 2 || ans.Room != "lobby" || ans.Node == "" {
			t.Fatalf("presence answer %+v, want nodes 2, the room and the node", ans)
		}
		members = append(members, ans.Members...)
	}
	slices.SortFunc(members, func(x, y backend.Member) int { return strings.Compare(x.User, y.User) })
	if len(members) != 2 || members[0] != (backend.Member{CID: a.cid, User: "alice"}) || members[1] != (backend.Member{CID: c.cid, User: "carol"}) {
		t.Fatalf("members %+v", members)
	}
	count := 0
	for _, ans := range b.presence(e, `{"type":"presence","id":"p2","count_only":true}`, "p2", 2) {
		count += ans.Count
	}
	if count != 2 {
		t.Fatalf("count of the service %d, want 2", count)
	}
	// A session that ends leaves its rooms.
	_ = a.conn.CloseNow()
	b.next(ofTypeCID("client_disconnected", a.cid))
	count = 0
	for _, ans := range b.presence(e, `{"type":"presence","room":"lobby","id":"p3","count_only":true}`, "p3", 2) {
		count += ans.Count
	}
	if count != 1 {
		t.Fatalf("lobby holds %d after a member left, want 1", count)
	}
	for _, ans := range b.presence(e, `{"type":"presence","room":"empty","id":"p4"}`, "p4", 2) {
		if ans.Members == nil && ans.Count != 0 {
			t.Fatalf("presence of an empty room %+v", ans)
		}
	}
}

func TestADirectWithMoreIsAProgressAnswer(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b.command(e, fmt.Sprintf(`{"type":"direct","cid":%q,"data":"50%%","reply_to":7,"more":true}`, c.cid))
	b.command(e, fmt.Sprintf(`{"type":"direct","cid":%q,"data":"done","reply_to":7}`, c.cid))
	b.command(e, fmt.Sprintf(`{"type":"direct","cid":%q,"data":"x","more":true}`, c.cid))
	for _, want := range []struct {
		data string
		more bool
	}{{`"50%"`, true}, {`"done"`, false}, {`"x"`, false}} {
		f := c.next()
		if f.Event != "dmb:direct" || string(f.Data) != want.data || f.More != want.more {
			t.Fatalf("frame %+v (data %s), want data %s more %v", f, f.Data, want.data, want.more)
		}
	}
}

func TestBadRoomCommandsHaveADefinedAnswer(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.MaxClientRooms = 2 })
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	for _, tc := range []struct{ payload, want string }{
		{`{"type":"join","room":"bad room","cid":"x","id":"e1"}`, "invalid room name"},
		{`{"type":"join","room":"","cid":"x","id":"e2"}`, "invalid room name"},
		{`{"type":"room","room":"` + string(make([]byte, 0)) + `","id":"e3"}`, "invalid room name"},
		{`{"type":"join","room":"lobby","id":"e4"}`, "join needs a cid or a user"},
		{`{"type":"join","room":"lobby","user":"alice","id":"e5"}`, "join by user needs auth (DMB_JWT_SECRET)"},
		{`{"type":"broadcast","data":1,"except":"c1","id":"e6"}`, "except must be a list of cids"},
		{`{"type":"presence","room":"a b","id":"e7"}`, "invalid room name"},
	} {
		b.command(e, tc.payload)
		ev := b.next(ofType("error"))
		if ev.Error != tc.want {
			t.Fatalf("%s: error %q, want %q", tc.payload, ev.Error, tc.want)
		}
	}
	// A join for a cid nobody holds changes nothing and says so.
	b.command(e, `{"type":"join","room":"lobby","cid":"nobody","id":"u"}`)
	if got := b.acks("u", 1); got != 0 {
		t.Fatalf("a join of an unknown cid changed %d", got)
	}
	if got := n.metric(`dmb_drops_total{reason="unknown_client"}`); got != 1 {
		t.Fatalf("unknown_client drops %v after a join of an unknown cid, want 1", got)
	}
	// Past DMB_MAX_CLIENT_ROOMS a join is refused and reported.
	for i, room := range []string{"r1", "r2", "r3"} {
		b.command(e, fmt.Sprintf(`{"type":"join","room":%q,"cid":%q,"id":"m%d"}`, room, c.cid, i))
	}
	c.expect("dmb:joined", "r1", "")
	c.expect("dmb:joined", "r2", "")
	if ev := b.next(ofType("error")); ev.Error != "too many rooms" || string(ev.ID) != `"m2"` {
		t.Fatalf("a join past the bound: %+v", ev)
	}
	if got := n.metric(`dmb_drops_total{reason="too_many_rooms"}`); got != 1 {
		t.Fatalf("too_many_rooms drops %v", got)
	}
}
