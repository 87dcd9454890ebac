package node_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/protocol"
)

// Sessions that survive a reconnect (docs/protocol.md, section 11).

// publishRecoverably publishes as a backend in any language does:
// FCALL of DMB's function on the backend's downlink channel.
func (e *env) publishRecoverably(ctx context.Context, bkid, payload string) {
	e.t.Helper()
	if err := e.rdb.FCall(ctx, history.Function, []string{"dmb:" + bkid}, payload).Err(); err != nil {
		e.t.Fatalf("FCALL %s: %v", history.Function, err)
	}
}

// resumeURL is the URL a client resumes its session with.
func resumeURL(n *testNode, service, token string, offsets ...string) string {
	q := url.Values{"resume": {token}}
	if len(offsets) > 0 {
		q.Set("offset", strings.Join(offsets, ","))
	}
	return n.wsURL(service) + "?" + q.Encode()
}

// sessionClient is a client that keeps what a resume needs: the newest
// session token (wsClient's), and the last offset of each history.
type sessionClient struct {
	*wsClient
	offsets map[string]string // stream -> last offset
}

func (c *sessionClient) keep(f frame) frame {
	if f.Offset != "" {
		stream, _, _ := strings.Cut(f.Offset, ":")
		c.offsets[stream] = f.Offset
	}
	return f
}

// next returns the next frame, keeping its token and offset.
func (c *sessionClient) next() frame { c.t.Helper(); return c.keep(c.wsClient.next()) }

func (c *sessionClient) offsetList() []string {
	var out []string
	for _, o := range c.offsets {
		out = append(out, o)
	}
	return out
}

// connectSession connects a client and reads its dmb:connected.
func connectSession(t *testing.T, n *testNode, service string) (*sessionClient, frame) {
	t.Helper()
	c := &sessionClient{wsClient: connect(t, n, service), offsets: map[string]string{}}
	f := c.next()
	if f.Event != "dmb:connected" || f.Session == "" {
		t.Fatalf("first frame %+v, want dmb:connected with a session", f)
	}
	c.cid = f.CID
	return c, f
}

// resumeSession resumes c's session on n and reads dmb:connected.
func (c *sessionClient) resume(n *testNode, service string) (*sessionClient, frame) {
	c.t.Helper()
	r := &sessionClient{wsClient: connectURL(c.t, resumeURL(n, service, c.session, c.offsetList()...), nil), offsets: c.offsets}
	r.node = n
	f := r.next()
	if f.Event != "dmb:connected" {
		c.t.Fatalf("first frame %+v, want dmb:connected", f)
	}
	r.cid = f.CID
	return r, f
}

// drop ends the connection without a close handshake: the node sees 1006.
func (c *sessionClient) drop() {
	_ = c.conn.CloseNow()
	<-c.ended
}

func TestAResumedSessionKeepsItsCIDRoomsAndWhatItMissedInOrder(t *testing.T) {
	e := newEnv(t)
	a, b := e.startNode(), e.startNode()
	be := e.startBackend("chat")
	ctx := e.ctx()

	c, _ := connectSession(t, a, "chat")
	be.next(ofTypeCID("client_connected", c.cid))
	if err := be.Join(ctx, "lobby", backend.Target{CID: c.cid}); err != nil {
		t.Fatal(err)
	}
	if f := c.next(); f.Event != "dmb:joined" {
		t.Fatalf("got %+v, want dmb:joined", f)
	}
	f := c.nextFrame()
	if f.Event != "dmb:session" || f.Session == "" {
		t.Fatalf("got %+v, want dmb:session with a new token", f)
	}
	c.session = f.Session
	e.publishRecoverably(ctx, be.BKID(), `{"type":"broadcast","data":"seen"}`)
	if f := c.next(); string(f.Data) != `"seen"` || !strings.HasPrefix(f.Offset, be.BKID()+":") {
		t.Fatalf("got %+v, want the broadcast with an offset of backend %s", f, be.BKID())
	}

	c.drop()
	gone := be.next(ofTypeCID("client_disconnected", c.cid))
	if gone.Code != 1006 || !gone.Resumable {
		t.Fatalf("client_disconnected %+v, want 1006 and resumable", gone)
	}
	// While it is away: a broadcast, a room message, a direct, all
	// recoverable, and a live-only publish it does not get back.
	e.publishRecoverably(ctx, be.BKID(), `{"type":"broadcast","data":1}`)
	if err := e.publish(ctx, "dmb:"+be.BKID(), `{"type":"broadcast","data":"live-only"}`); err != nil {
		t.Fatal(err)
	}
	e.publishRecoverably(ctx, be.BKID(), `{"type":"room","room":"lobby","data":2}`)
	e.publishRecoverably(ctx, be.BKID(), fmt.Sprintf(`{"type":"direct","cid":%q,"data":3}`, c.cid))
	e.publishRecoverably(ctx, be.BKID(), `{"type":"room","room":"elsewhere","data":"not its room"}`)

	r, f := c.resume(b, "chat")
	if f.CID != c.cid || !f.Resumed || !f.Recovered || f.Session == "" {
		t.Fatalf("dmb:connected %+v, want cid %s, resumed and recovered", f, c.cid)
	}
	back := be.next(ofTypeCID("client_connected", c.cid))
	if !back.Resumed {
		t.Fatalf("client_connected %+v, want resumed", back)
	}
	var offsets []string
	for i, want := range []struct{ event, data string }{{"dmb:broadcast", "1"}, {"dmb:room", "2"}, {"dmb:direct", "3"}} {
		got := r.next()
		if got.Event != want.event || string(got.Data) != want.data || got.Offset == "" {
			t.Fatalf("missed message %d: %+v, want %s %s with an offset", i, got, want.event, want.data)
		}
		offsets = append(offsets, got.Offset)
	}
	// Then what is new, once, after what it missed; the room is still its.
	e.publishRecoverably(ctx, be.BKID(), `{"type":"room","room":"lobby","data":4}`)
	if got := r.next(); got.Event != "dmb:room" || string(got.Data) != "4" || got.Offset <= offsets[2] {
		t.Fatalf("got %+v, want the new room message after the missed ones", got)
	}
}

func TestAResumeClosesTheConnectionStillOpenWith4010(t *testing.T) {
	e := newEnv(t)
	a, b := e.startNode(), e.startNode()
	be := e.startBackend("chat")

	old, _ := connectSession(t, a, "chat")
	be.next(ofTypeCID("client_connected", old.cid))
	r, f := old.resume(b, "chat")
	if !f.Resumed || f.CID != old.cid {
		t.Fatalf("dmb:connected %+v, want the same session resumed", f)
	}
	if code, reason := old.closed(); code != 4010 || reason != "session resumed elsewhere" {
		t.Fatalf("older connection closed with %d %q, want 4010", code, reason)
	}
	be.next(func(ev backendEvent) bool { return ev.Type == "client_connected" && ev.CID == old.cid && ev.Resumed })
	be.caughtUp()
	for _, ev := range be.held {
		if ev.Type == "client_disconnected" {
			t.Fatalf("the backend was told %+v: the session goes on", ev)
		}
	}
	// On one node the same.
	again, f := r.resume(b, "chat")
	if !f.Resumed || f.CID != old.cid {
		t.Fatalf("dmb:connected %+v, want the same session resumed", f)
	}
	if code, _ := r.closed(); code != 4010 {
		t.Fatalf("older connection on the same node closed with %d, want 4010", code)
	}
	e.publishRecoverably(e.ctx(), be.BKID(), `{"type":"broadcast","data":"after"}`)
	if got := again.next(); string(got.Data) != `"after"` {
		t.Fatalf("got %+v after the resume on the same node", got)
	}
}

func TestResumesThatCannotBeGetAFreshSession(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.ResumeWindow = 2 * time.Second })
	be := e.startBackend("chat")
	e.startBackend("other")

	c, _ := connectSession(t, n, "chat")
	valid := c.session
	parts := strings.Split(valid, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
	otherSvc, _ := connectSession(t, n, "other")

	for name, url := range map[string]string{
		"forged":              resumeURL(n, "chat", forged),
		"truncated":           resumeURL(n, "chat", valid[:len(valid)-5]),
		"not a token":         resumeURL(n, "chat", "hello"),
		"of another service":  resumeURL(n, "chat", otherSvc.session),
		"for another service": resumeURL(n, "other", valid),
	} {
		r := &sessionClient{wsClient: connectURL(t, url, nil), offsets: map[string]string{}}
		f := r.next()
		if f.Event != "dmb:connected" || f.Resumed || f.CID == c.cid || f.CID == otherSvc.cid || f.Session == "" {
			t.Errorf("%s: %+v, want a fresh session", name, f)
		}
	}

	// A token resumes once: used again, it is a fresh session.
	r, f := c.resume(n, "chat")
	if !f.Resumed {
		t.Fatalf("first resume: %+v", f)
	}
	replay := &sessionClient{wsClient: connectURL(t, resumeURL(n, "chat", valid), nil), offsets: map[string]string{}}
	if f := replay.next(); f.Resumed || f.CID == c.cid {
		t.Errorf("replayed token: %+v, want a fresh session", f)
	}

	// Past the window after the connection dropped: a fresh session.
	r.drop()
	// The mark is written before client_disconnected, in one pipeline.
	be.next(func(ev backendEvent) bool { return ev.Type == "client_disconnected" && ev.CID == c.cid && ev.Resumable })
	waitGone(t, e, "{dmb}:resume:"+c.cid)
	if _, f := r.resume(n, "chat"); f.Resumed || f.CID == c.cid {
		t.Errorf("after the window: %+v, want a fresh session", f)
	}
	if got := n.metric(`dmb_resumes_total{result="refused"}`); got != 7 {
		t.Errorf("dmb_resumes_total{refused} = %v, want 7", got)
	}
}

// waitGone waits until key has expired.
func waitGone(t *testing.T, e *env, key string) {
	t.Helper()
	ctx := e.ctx()
	for e.rdb.Exists(ctx, key).Val() != 0 {
		ttl := e.rdb.PTTL(ctx, key).Val()
		select {
		case <-time.After(max(ttl, 10*time.Millisecond)): // the key's own expiry is the event
		case <-ctx.Done():
			t.Fatalf("%s did not expire", key)
		}
	}
}

func TestAResumeSaysWhenHistoryNoLongerCoversTheGap(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.HistorySize = 3 })
	be := e.startBackend("chat")
	other := e.startBackend("other")
	ctx := e.ctx()

	c, _ := connectSession(t, n, "chat")
	e.publishRecoverably(ctx, be.BKID(), `{"type":"broadcast","data":0}`)
	c.next()
	c.drop()
	for i := 1; i <= 5; i++ {
		e.publishRecoverably(ctx, be.BKID(), fmt.Sprintf(`{"type":"broadcast","data":%d}`, i))
	}
	r, f := c.resume(n, "chat")
	if !f.Resumed || f.Recovered {
		t.Fatalf("dmb:connected %+v, want resumed, not recovered", f)
	}
	for want := 3; want <= 5; want++ { // what history kept, in order
		if got := r.next(); string(got.Data) != fmt.Sprint(want) {
			t.Fatalf("got %+v, want broadcast %d", got, want)
		}
	}

	// Offsets that never existed, or of another service's backend.
	for name, off := range map[string]string{
		"never existed":   be.BKID() + ":1-1",
		"another service": other.BKID() + ":1-1",
		"not an offset":   "zz",
		"an unknown bkid": "999999:1-1",
	} {
		r.drop()
		r.offsets = map[string]string{"x": off}
		var f frame
		r, f = r.resume(n, "chat")
		if !f.Resumed || f.Recovered {
			t.Errorf("%s: %+v, want resumed, not recovered", name, f)
		}
	}
}

var _ = websocket.StatusNormalClosure

func TestAnotherUsersResumeGetsAFreshSession(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withAuth)
	e.startBackend("chat")
	alice := &sessionClient{wsClient: connectURL(t, n.wsURL("chat")+"?token="+token(t, "alice"), nil), offsets: map[string]string{}}
	alice.welcome()
	alice.drop()
	as := func(user string) frame {
		q := url.Values{"token": {token(t, user)}, "resume": {alice.session}}
		c := connectURL(t, n.wsURL("chat")+"?"+q.Encode(), nil)
		return c.next()
	}
	if f := as("bob"); f.Resumed || f.CID == alice.cid {
		t.Fatalf("bob with alice's session: %+v, want a fresh session", f)
	}
	if f := as("alice"); !f.Resumed || f.CID != alice.cid {
		t.Fatalf("alice with her session: %+v, want it resumed", f)
	}
}

// A resume that Redis cannot serve in time is not refused: the client is
// closed with 1013, and its token takes up the session once Redis answers.
func TestAResumeThatFailsForNowIsTriedAgain(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	be := e.startBackend("chat")
	c, _ := connectSession(t, n, "chat")
	c.drop()
	be.next(ofTypeCID("client_disconnected", c.cid))
	// Redis holds every write for 7 s: the resume's claim cannot be made
	// within its 5 s.
	if err := e.rdb.Do(e.ctx(), "CLIENT", "PAUSE", "7000", "WRITE").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	code := outcome(t, resumeURL(n, "chat", c.session))
	if err := e.rdb.Do(e.ctx(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatalf("CLIENT UNPAUSE: %v", err)
	}
	if code != protocol.CloseTryAgainLater {
		t.Fatalf("a resume while Redis held writes: close %d, want %d", code, protocol.CloseTryAgainLater)
	}
	if _, f := c.resume(n, "chat"); !f.Resumed || f.CID != c.cid {
		t.Fatalf("the resume tried again: %+v, want the session of %s", f, c.cid)
	}
}

func TestAResumeKeepsTheSessionsBackendWhileItIsLive(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	one, two := e.startBackend("chat"), e.startBackend("chat")
	// Clients are spread over the two: each resumes to the one it had.
	for range 4 {
		c, _ := connectSession(t, n, "chat")
		// The client's dmb:connected may come before its backend hears of
		// it: wait for either backend to.
		var had *testBackend
		eventually(t, "a backend told of "+c.cid, func() bool {
			for _, be := range []*testBackend{one, two} {
				if slices.ContainsFunc(be.drainEvents(), ofTypeCID("client_connected", c.cid)) {
					had = be
					return true
				}
			}
			return false
		})
		c.drop()
		had.next(ofTypeCID("client_disconnected", c.cid))
		c.resume(n, "chat")
		had.next(func(ev backendEvent) bool { return ev.Type == "client_connected" && ev.CID == c.cid && ev.Resumed })
	}
}

// drainEvents reads what has come so far into held, and returns held.
func (b *testBackend) drainEvents() []backendEvent {
	b.caughtUp()
	return b.held
}

func TestAClientThatMissedMoreThanItsQueueHoldsIsToldSo(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.SendQueue = 16 })
	be := e.startBackend("chat")
	c, _ := connectSession(t, n, "chat")
	c.drop()
	for i := range 40 {
		e.publishRecoverably(e.ctx(), be.BKID(), fmt.Sprintf(`{"type":"broadcast","data":%d}`, i))
	}
	r, f := c.resume(n, "chat")
	if !f.Resumed || f.Recovered || f.Session == "" {
		t.Fatalf("dmb:connected %+v, want resumed, not recovered, with a token", f)
	}
	// The newest of what it missed, in order, and it stays connected.
	first := r.next()
	for want := string(first.Data); want != "39"; {
		got := r.next()
		if got.Event != "dmb:broadcast" {
			t.Fatalf("got %+v", got)
		}
		want = string(got.Data)
	}
	e.publishRecoverably(e.ctx(), be.BKID(), `{"type":"broadcast","data":"live"}`)
	if got := r.next(); string(got.Data) != `"live"` {
		t.Fatalf("got %+v, want the live broadcast", got)
	}
}

func TestAKickIsNotUndoneByAResume(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	be := e.startBackend("chat")
	ctx := e.ctx()
	// Kicked while away: the resume ends with the kick.
	c, _ := connectSession(t, n, "chat")
	c.drop()
	if ev := be.next(ofTypeCID("client_disconnected", c.cid)); !ev.Resumable {
		t.Fatalf("client_disconnected = %+v, want resumable", ev)
	}
	e.publishRecoverably(ctx, be.BKID(), fmt.Sprintf(`{"type":"kick","cid":%q,"reason":"banned"}`, c.cid))
	r, f := c.resume(n, "chat")
	if !f.Resumed {
		t.Fatalf("resume: %+v", f)
	}
	if code, reason := r.closed(); code != 4009 || reason != "banned" {
		t.Fatalf("closed with %d %q, want the kick", code, reason)
	}
	// Kicked after a resume, within the window of an earlier drop: no
	// resume.
	d, _ := connectSession(t, n, "chat")
	d.drop()
	d2, f := d.resume(n, "chat")
	if !f.Resumed {
		t.Fatalf("resume at once after a drop: %+v", f)
	}
	if err := be.Kick(ctx, d.cid, "out"); err != nil {
		t.Fatal(err)
	}
	if code, _ := d2.closed(); code != 4009 {
		t.Fatalf("kick: %d", code)
	}
	be.next(func(ev backendEvent) bool {
		return ev.Type == "client_disconnected" && ev.CID == d.cid && ev.Code == 4009
	})
	if _, f := d2.resume(n, "chat"); f.Resumed {
		t.Fatalf("a kicked session was resumed: %+v", f)
	}
}

func TestAResumeDoesNotGiveARoomsMessagesFromBeforeItJoined(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	be := e.startBackend("chat")
	ctx := e.ctx()
	c, _ := connectSession(t, n, "chat")
	e.publishRecoverably(ctx, be.BKID(), `{"type":"broadcast","data":"seen"}`)
	c.next()
	e.publishRecoverably(ctx, be.BKID(), `{"type":"room","room":"secret","data":"before it joined"}`)
	e.publishRecoverably(ctx, be.BKID(), fmt.Sprintf(`{"type":"join","room":"secret","cid":%q}`, c.cid))
	if f := c.next(); f.Event != "dmb:joined" {
		t.Fatalf("got %+v", f)
	}
	e.publishRecoverably(ctx, be.BKID(), `{"type":"room","room":"secret","data":"after"}`)
	if f := c.next(); string(f.Data) != `"after"` {
		t.Fatalf("got %+v", f)
	}
	// It drops having kept, as its last offset, the one before the room's
	// messages (the join carries none).
	c.offsets = map[string]string{}
	c.drop()
	e.publishRecoverably(ctx, be.BKID(), `{"type":"broadcast","data":"end"}`)
	r, f := c.resume(n, "chat")
	if !f.Resumed {
		t.Fatalf("resume %+v", f)
	}
	for {
		got := r.next()
		if string(got.Data) == `"before it joined"` {
			t.Fatalf("the resume gave a room message from before the client joined")
		}
		if string(got.Data) == `"end"` {
			return
		}
	}
}
