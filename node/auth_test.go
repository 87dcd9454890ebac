package node_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
)

const jwtSecret = "0123456789abcdef0123456789abcdef"

func withAuth(c *config.Config) { c.JWTSecret = jwtSecret }

func token(t *testing.T, user string, services ...string) string {
	t.Helper()
	tok, err := backend.MintToken(jwtSecret, user, time.Minute, services...)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (n *testNode) wsURLToken(service, tok string) string {
	return n.wsURL(service) + "?token=" + url.QueryEscape(tok)
}

func signed(t *testing.T, m jwt.SigningMethod, key any, sub string, exp time.Duration, svc ...string) string {
	t.Helper()
	c := auth.Claims{RegisteredClaims: jwt.RegisteredClaims{Subject: sub}, Services: svc}
	if exp != 0 {
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(exp))
	}
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBadTokensAreClosedWith4001(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withAuth)
	e.startBackend("chat")
	key := []byte(jwtSecret)
	cases := []struct{ name, token, reason string }{
		{"missing", "", "token missing"},
		{"malformed", "garbage", "token invalid"},
		{"wrongly signed", signed(t, jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), "alice", time.Minute), "token invalid"},
		{"expired", signed(t, jwt.SigningMethodHS256, key, "alice", -time.Minute), "token expired"},
		{"without exp", signed(t, jwt.SigningMethodHS256, key, "alice", 0), "token invalid"},
		{"without sub", signed(t, jwt.SigningMethodHS256, key, "", time.Minute), "token has no sub"},
		{"for another service", token(t, "alice", "games"), "token not valid for this service"},
		{"alg none", signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "alice", time.Minute), "token invalid"},
		{"alg HS384", signed(t, jwt.SigningMethodHS384, key, "alice", time.Minute), "token invalid"},
	}
	for _, tc := range cases {
		code, reason := refused(t, n.wsURLToken("chat", tc.token), nil)
		if code != 4001 || reason != tc.reason {
			t.Errorf("%s: close %d %q, want 4001 %q", tc.name, code, reason, tc.reason)
		}
	}
	// A good token is admitted.
	connectURL(t, n.wsURLToken("chat", token(t, "alice", "chat", "games")), nil).welcome()
}

func TestTheUserIsAddedToClientConnectedAndMessage(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withAuth)
	b := e.startBackend("chat")
	c := connectURL(t, n.wsURLToken("chat", token(t, "alice")), nil).welcome()
	if ev := b.next(ofTypeCID("client_connected", c.cid)); ev.User != "alice" {
		t.Fatalf("client_connected %+v", ev)
	}
	c.send(`{"event":"dmb:message","data":"hi","id":1}`)
	if ev := b.next(ofTypeCID("message", c.cid)); ev.User != "alice" || string(ev.Data) != `"hi"` {
		t.Fatalf("message %+v", ev)
	}
}

func TestDirectToAUserReachesEveryConnectionOnEveryNode(t *testing.T) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(withAuth), e.startNode(withAuth)}
	b := e.startBackend("chat")
	e.startBackend("games")
	alice := []*wsClient{
		connectURL(t, nodes[0].wsURLToken("chat", token(t, "alice")), nil).welcome(),
		connectURL(t, nodes[0].wsURLToken("chat", token(t, "alice")), nil).welcome(),
		connectURL(t, nodes[1].wsURLToken("chat", token(t, "alice")), nil).welcome(),
	}
	bob := connectURL(t, nodes[1].wsURLToken("chat", token(t, "bob")), nil).welcome()
	aliceInGames := connectURL(t, nodes[1].wsURLToken("games", token(t, "alice")), nil).welcome()
	if err := b.Publish(context.Background(), backend.Command{Type: "direct", User: "alice", Data: "psst", ID: "u1"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range alice {
		if f := c.next(); f.Event != "dmb:direct" || string(f.Data) != `"psst"` {
			t.Fatalf("alice's tab got %+v", f)
		}
	}
	got := map[string]int{}
	for range 2 {
		ack := b.next(ofType("bk_message_ack"))
		got[ack.Node] = ack.Delivered
	}
	if got[nodes[0].id] != 2 || got[nodes[1].id] != 1 {
		t.Fatalf("acks %v, want 2 and 1", got)
	}
	// Neither bob nor alice's tab of another service got it.
	for _, c := range []*wsClient{bob, aliceInGames} {
		c.send(`{"event":"dmb:message","data":0,"id":9}`)
		if f := c.next(); f.Event != "dmb:ack" {
			t.Fatalf("got %+v, want only its ack", f)
		}
	}
}

func TestDirectToAUserReachesNobodyWithoutAuth(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	if err := b.Publish(context.Background(), backend.Command{Type: "direct", User: "alice", Data: 1, ID: "u"}); err != nil {
		t.Fatal(err)
	}
	if ack := b.next(ofType("bk_message_ack")); ack.Delivered != 0 {
		t.Fatalf("ack %+v", ack)
	}
	c.send(`{"event":"dmb:message","data":0,"id":1}`)
	if f := c.next(); f.Event != "dmb:ack" {
		t.Fatalf("got %+v", f)
	}
}
