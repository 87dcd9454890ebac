package node_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/redistest"
)

// aclRules reads the ACL rules that docs/security.md gives, so that the
// test checks what the operators are told to use.
func aclRules(t *testing.T) (rules []string, passwords map[string]string) {
	t.Helper()
	doc, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```acl\n(.*?)```").FindSubmatch(doc)
	if block == nil {
		t.Fatal("docs/security.md has no acl block")
	}
	passwords = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(block[1])), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "user" {
			t.Fatalf("acl line %q", line)
		}
		if f[1] == "default" {
			continue // the test's own tools use the default user
		}
		for _, op := range f {
			if p, ok := strings.CutPrefix(op, ">"); ok {
				passwords[f[1]] = p
			}
		}
		rules = append(rules, line)
	}
	return rules, passwords
}

// startACLRedis starts a Redis whose users are the documented ones, and a
// default user for the test's own checks.
func startACLRedis(t *testing.T) (*redistest.Server, map[string]string) {
	t.Helper()
	rules, passwords := aclRules(t)
	file := filepath.Join(t.TempDir(), "users.acl")
	body := "user default on nopass ~* &* +@all\n" + strings.Join(rules, "\n") + "\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return redistest.Start(t, "--aclfile", file), passwords
}

func userClient(t *testing.T, r *redistest.Server, user, password string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), Username: user, Password: password, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func isNoPerm(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOPERM") }

func TestTheDocumentedRedisACLsRunTheWholeFlowAndDenyTheRest(t *testing.T) {
	r, passwords := startACLRedis(t)
	e := &env{t: t, redis: r, rdb: r.Client(), topo: single(r)}
	n := e.startNode(func(c *config.Config) {
		c.RedisUsername, c.RedisPassword = "dmb", passwords["dmb"]
		c.BackendRetention = c.BackendTimeout // the prune runs as the dmb user too
	})

	// A backend as the backend user, with the Go library.
	events := make(chan backend.Event, 100)
	var b *backend.Backend
	b = runBackendAs(t, userClient(t, r, "backend", passwords["backend"]), "chat", func(ctx context.Context, ev backend.Event) {
		events <- ev
		if ev.Type == backend.EventMessage {
			_ = b.Direct(ctx, ev.CID, "pong", ev.ID)
		}
	})

	// Clients connect, send, get acks, replies and broadcasts.
	c := connect(t, n, "chat").welcome()
	c.send(`{"event":"dmb:message","data":"ping","id":1}`)
	// The ack and the backend's reply, in either order.
	got := map[string]frame{}
	for len(got) < 2 {
		f := c.next()
		got[f.Event] = f
	}
	if f := got["dmb:direct"]; string(f.Data) != `"pong"` || string(f.ReplyTo) != "1" {
		t.Fatalf("frames %+v, want an ack and the reply", got)
	}
	if _, ok := got["dmb:ack"]; !ok {
		t.Fatalf("frames %+v, want an ack and the reply", got)
	}
	if err := b.Broadcast(e.ctx(), "all"); err != nil {
		t.Fatal(err)
	}
	if f := c.nextEvent("dmb:broadcast"); string(f.Data) != `"all"` {
		t.Fatalf("broadcast = %+v", f)
	}

	// A recoverable publish as the backend user, and a resume that
	// recovers it, as the dmb user.
	sc := &sessionClient{wsClient: connect(t, n, "chat"), offsets: map[string]string{}}
	sc.welcome()
	sc.drop()
	waitEvent(t, events, "client_disconnected")
	if err := userClient(t, r, "backend", passwords["backend"]).FCall(e.ctx(), history.Function, []string{"dmb:" + b.BKID()}, `{"type":"broadcast","data":"kept"}`).Err(); err != nil {
		t.Fatalf("FCALL %s as the backend user: %v", history.Function, err)
	}
	rc, f := sc.resume(n, "chat")
	if !f.Resumed || !f.Recovered {
		t.Fatalf("resume as the dmb user: %+v", f)
	}
	if got := rc.next(); string(got.Data) != `"kept"` || got.Offset == "" {
		t.Fatalf("recovered %+v", got)
	}

	clients, err := e.rdb.ClientList(e.ctx()).Result()
	if err != nil || !strings.Contains(clients, " user=dmb ") || !strings.Contains(clients, " user=backend ") {
		t.Fatalf("the node and the backend are not connected as their users: %v\n%s", err, clients)
	}

	be := userClient(t, r, "backend", passwords["backend"])
	dmb := userClient(t, r, "dmb", passwords["dmb"])
	// A backend cannot publish on an uplink, its own or another's: no
	// forged client events.
	for _, ch := range []string{"dmb:uplink:" + b.BKID(), "dmb:uplink:1"} {
		if err := be.Publish(e.ctx(), ch, `{"type":"message","cid":"x","data":1}`).Err(); !isNoPerm(err) {
			t.Errorf("backend PUBLISH %s: %v, want NOPERM", ch, err)
		}
	}
	denied := map[string]func() error{
		"backend reads the registry":       func() error { return be.Get(e.ctx(), "{dmb}:bkid").Err() },
		"backend writes the registry":      func() error { return be.SAdd(e.ctx(), "{dmb}:services", "evil").Err() },
		"backend watches registrations":    func() error { return subscribeErr(be, "dmb:register") },
		"backend reads another's downlink": func() error { return subscribeErr(be, "dmb:1") },
		"backend subscribes to a pattern":  func() error { return psubscribeErr(be, "dmb:*") },
		"backend flushes":                  func() error { return be.FlushAll(e.ctx()).Err() },
		"backend reads a history":          func() error { return be.XRange(e.ctx(), history.Key("dmb:"+b.BKID()), "-", "+").Err() },
		"backend loads functions": func() error {
			return be.FunctionLoadReplace(e.ctx(), "#!lua name=x\nredis.register_function('x', function() return 1 end)").Err()
		},
		"dmb reads a key outside its prefix":   func() error { return dmb.Get(e.ctx(), "session:1").Err() },
		"dmb publishes outside its prefix":     func() error { return dmb.Publish(e.ctx(), "other", "x").Err() },
		"dmb reconfigures the server":          func() error { return dmb.ConfigSet(e.ctx(), "maxmemory", "1").Err() },
		"dmb flushes":                          func() error { return dmb.FlushAll(e.ctx()).Err() },
		"dmb lists keys":                       func() error { return dmb.Keys(e.ctx(), "*").Err() },
		"a script of dmb's touches other keys": func() error { return dmb.Eval(e.ctx(), "return redis.call('GET', 'session:1')", nil).Err() },
	}
	for what, try := range denied {
		if err := try(); err == nil || !strings.Contains(err.Error(), "NOPERM") && !strings.Contains(err.Error(), "can't access") {
			t.Errorf("%s: %v, want refused", what, err)
		}
	}
	// What the rules cannot restrict (docs/security.md says so): any bkid's
	// downlink and uplink, any leave.
	if err := be.Publish(e.ctx(), "dmb:1", `{"type":"broadcast","data":1}`).Err(); err != nil {
		t.Errorf("backend PUBLISH on another downlink: %v (the docs say it is allowed)", err)
	}
	if err := subscribeErr(be, "dmb:uplink:1"); err != nil {
		t.Errorf("backend SUBSCRIBE to another uplink: %v (the docs say it is allowed)", err)
	}

	// A leave and its notice, and the registry's prune, as the dmb user.
	if err := b.Leave(e.ctx()); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, backend.EventDisconnected)
	crashed := userClient(t, r, "backend", passwords["backend"])
	runBackendAs(t, crashed, "crashed", func(context.Context, backend.Event) {})
	_ = crashed.Close() // its subscription goes, as in a crash
	eventually(t, "the crashed service pruned", func() bool {
		ok, _ := e.rdb.SIsMember(e.ctx(), "{dmb}:services", "crashed").Result()
		return !ok
	})
	// A bkid DMB never issued is looked up, as the dmb user.
	_ = be.Publish(e.ctx(), "dmb:7", `{"type":"broadcast","data":1}`).Err()
	eventually(t, "the unknown bkid looked up", func() bool {
		return n.metric(`dmb_bkid_lookups_total{result="unknown"}`) >= 1
	})
	_, metrics := get(t, n.url("/metrics"))
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "dmb_redis_errors_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("a Redis command DMB needs was refused: %s", line)
		}
	}
}

func subscribeErr(c *redis.Client, channel string) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ps := c.Subscribe(ctx, channel)
	defer ps.Close()
	_, err := ps.Receive(ctx)
	return err
}

func psubscribeErr(c *redis.Client, pattern string) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ps := c.PSubscribe(ctx, pattern)
	defer ps.Close()
	_, err := ps.Receive(ctx)
	return err
}

func waitEvent(t *testing.T, events chan backend.Event, typ string) backend.Event {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case ev := <-events:
			if ev.Type == typ {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event", typ)
		}
	}
}

// runBackendAs runs a backend of service with the Go library on rdb until
// the test ends, and waits until it is registered.
func runBackendAs(t *testing.T, rdb *redis.Client, service string, h backend.Handler) *backend.Backend {
	t.Helper()
	b := backend.New(rdb, service, backend.Options{Logger: testLogger(), RegisterTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("backend %s: %v", service, err)
	case <-time.After(wait):
		t.Fatalf("backend %s not registered", service)
	}
	return b
}
