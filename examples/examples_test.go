// Package examples_test runs the backend examples (Python and Node) as
// subprocesses against a real redis-server and an in-process DMB node, and
// talks to them over WebSocket as a browser would.
package examples_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

// wait bounds every awaited event, recovery after a Redis restart included.
const wait = 30 * time.Second

// secret is the DMB_JWT_SECRET of the auth tests: 32 bytes.
const secret = "0123456789abcdef0123456789abcdef"

var testLogger = nodetest.Logger

// example is one language's example backend.
type example struct {
	name string
	// check fails the test, saying what to install, when the language's
	// runtime or Redis client is missing.
	check func(t *testing.T)
	// echo is the command line of the echo backend.
	echo []string
	// env is what the echo backend needs in its environment besides Redis's
	// address: where the library is, for Python (the package tests install
	// it with pip).
	env []string
	// mint is the command line of a one-liner that prints two tokens for
	// user alice, minted with the library and secret: one for the service
	// echo, one for the service chat.
	mint []string
}

func examples(t *testing.T) []example {
	dir, err := os.Getwd() // the package directory: examples/
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(dir)
	return []example{{
		name: "python",
		check: func(t *testing.T) {
			out, err := exec.Command("/usr/bin/python3", "-c", "import redis").CombinedOutput()
			if err != nil {
				t.Fatalf("/usr/bin/python3 cannot import redis (install it: apt-get install -y python3-redis): %v\n%s", err, out)
			}
		},
		echo: []string{"/usr/bin/python3", filepath.Join(dir, "python", "echo.py")},
		env:  []string{"PYTHONPATH=" + filepath.Join(root, "clients", "python")},
		mint: []string{"/usr/bin/python3", "-c", `import sys
sys.path.insert(0, sys.argv[1])
from dmb_backend import mint_token
print(mint_token(sys.argv[2], "alice", 60, ["echo"]))
print(mint_token(sys.argv[2], "alice", 60, services=["chat"]))`, filepath.Join(root, "clients", "python"), secret},
	}, {
		name: "node",
		check: func(t *testing.T) {
			if _, err := exec.LookPath("node"); err != nil {
				t.Fatalf("node not found (install Node.js 20 or later): %v", err)
			}
			for _, pkg := range []string{"redis", "@dmb/backend"} {
				if _, err := os.Stat(filepath.Join(root, "node_modules", pkg, "package.json")); err != nil {
					t.Fatalf("the npm package %s is missing (run `npm ci` in %s): %v", pkg, root, err)
				}
			}
		},
		echo: []string{"node", filepath.Join(dir, "node", "echo.mjs")},
		mint: []string{"node", "--input-type=module", "-e", `
const { mintToken } = await import('@dmb/backend');
console.log(mintToken(process.argv[1], 'alice', 60, ['echo']));
console.log(mintToken(process.argv[1], 'alice', 60, ['chat']));`,
			secret},
	}}
}

// TestEchoSurvivesARedisRestart runs each echo example, checks its answers,
// then kills Redis and starts it again, empty, and checks the example
// registered again by itself.
func TestEchoSurvivesARedisRestart(t *testing.T) {
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			ex.check(t)
			rs := redistest.Start(t)
			n := startNode(t, rs, nil)
			startExample(t, ex, singleEnv(rs))

			echoOnce(t, n)

			rs.Kill()
			eventually(t, "the node to notice Redis is gone", func() bool { return !n.Ready(context.Background()) })
			start := time.Now()
			rs.Restart()
			// Until its next refresh, the node's view of the backends may
			// be from before the restart: it may then accept a client for
			// the old bkid and answer "backend unavailable". A client
			// retries, as it would after 4503.
			echoAgain(t, n, 8, "the Redis restart")
			t.Logf("%s: echo again %v after redis-server was started again", ex.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestMintedTokenIsAccepted mints tokens with each library and presents
// them to a node with auth on.
func TestMintedTokenIsAccepted(t *testing.T) {
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			ex.check(t)
			out, err := exec.Command(ex.mint[0], ex.mint[1:]...).Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					t.Fatalf("mint: %v\n%s", err, ee.Stderr)
				}
				t.Fatalf("mint: %v", err)
			}
			tokens := strings.Fields(string(out))
			if len(tokens) != 2 {
				t.Fatalf("mint printed %q, want two tokens", out)
			}
			forEcho, forChat := tokens[0], tokens[1]

			rs := redistest.Start(t)
			n := startNode(t, rs, func(c *config.Config) { c.JWTSecret = secret })
			// Watch every uplink: a pattern subscription does not make a
			// backend live (PUBSUB NUMSUB counts channels only).
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			rdb := rs.Client()
			ps := rdb.PSubscribe(ctx, "dmb:uplink:*")
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				t.Fatalf("psubscribe: %v", err)
			}
			startExample(t, ex, singleEnv(rs))

			c := dialAccepted(t, n, "echo", forEcho)
			for {
				msg, err := ps.ReceiveMessage(ctx)
				if err != nil {
					t.Fatalf("waiting for client_connected of %s: %v", c.cid, err)
				}
				var ev struct{ Type, CID, User string }
				if err := json.Unmarshal([]byte(msg.Payload), &ev); err != nil {
					t.Fatalf("uplink event %q: %v", msg.Payload, err)
				}
				if ev.Type == "client_connected" && ev.CID == c.cid {
					if ev.User != "alice" {
						t.Fatalf("client_connected = %s, want user alice", msg.Payload)
					}
					break
				}
			}
			if !c.roundTrip(7) {
				t.Fatalf("message 7: backend unavailable")
			}

			// The svc claim is honoured: the other token admits only chat.
			if code := dialCode(t, n, "echo", forChat); code != 4001 {
				t.Fatalf("a token for the service chat: close %d, want 4001", code)
			}
			if code := dialCode(t, n, "echo", ""); code != 4001 {
				t.Fatalf("no token: close %d, want 4001", code)
			}
		})
	}
}

// startNode starts an in-process DMB node on rs and waits until it is ready.
func startNode(t *testing.T, rs *redistest.Server, mutate func(*config.Config)) *node.Node {
	t.Helper()
	cfg := nodetest.Config(t, rs)
	if mutate != nil {
		mutate(&cfg)
	}
	return nodetest.Start(t, cfg, node.Options{}).Node
}

var eventually = nodetest.Eventually

// singleEnv is the environment that points an example at one Redis.
func singleEnv(rs *redistest.Server) []string {
	return []string{"REDIS_HOST=127.0.0.1", fmt.Sprintf("REDIS_PORT=%d", rs.Port())}
}

// startExample runs the echo backend of ex, with the Redis environment
// redisEnv in its own process group. When the test ends it sends SIGTERM
// and expects a clean exit (status 0); its output is shown when the test
// failed.
func startExample(t *testing.T, ex example, redisEnv []string) {
	t.Helper()
	argv := ex.echo
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "DMB_PREFIX=dmb", "DMB_SERVICE=echo", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
	cmd.Env = append(cmd.Env, redisEnv...)
	cmd.Env = append(cmd.Env, ex.env...)
	out := &nodetest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	proctest.DieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("%s did not exit cleanly on SIGTERM: %v", filepath.Base(argv[len(argv)-1]), err)
			}
		case <-time.After(wait):
			t.Errorf("%s did not exit on SIGTERM", filepath.Base(argv[len(argv)-1]))
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("output of %v:\n%s", argv[len(argv)-1], out)
		}
	})
}

// client is one WebSocket client of a node.
type client struct {
	t    *testing.T
	conn *websocket.Conn
	cid  string
}

// frame is a frame DMB sends to a client.
type frame struct {
	Event   string          `json:"event"`
	CID     string          `json:"cid"`
	Data    json.RawMessage `json:"data"`
	ID      json.RawMessage `json:"id"`
	ReplyTo json.RawMessage `json:"reply_to"`
	Error   string          `json:"error"`
}

func wsURL(n *node.Node, service, token string) string {
	u := "ws://" + n.Addr().String() + "/ws/" + service
	if token != "" {
		u += "?token=" + url.QueryEscape(token)
	}
	return u
}

// dial connects once and returns the client when DMB accepted it (its first
// frame is dmb:connected), else the error, with the close code DMB sent.
func dial(t *testing.T, n *node.Node, service, token string) (*client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(n, service, token), nil)
	if err != nil {
		return nil, err
	}
	c := &client{t: t, conn: conn}
	f, err := c.read(ctx)
	if err != nil {
		_ = conn.CloseNow()
		return nil, err
	}
	if f.Event != "dmb:connected" || f.CID == "" {
		_ = conn.CloseNow()
		return nil, fmt.Errorf("first frame %+v, want dmb:connected", f)
	}
	c.cid = f.CID
	t.Cleanup(func() { _ = conn.CloseNow() })
	return c, nil
}

// dialAccepted dials until DMB accepts the client: until the example has
// registered, DMB refuses it with 4004 (unknown service) or 4503 (no live
// backend).
func dialAccepted(t *testing.T, n *node.Node, service, token string) *client {
	t.Helper()
	var err error
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		var c *client
		if c, err = dial(t, n, service, token); err == nil {
			return c
		}
		<-tick.C
	}
	t.Fatalf("no client of %s accepted within %v; last: %v", service, wait, err)
	return nil
}

// dialCode dials once and returns the close code DMB refused the client
// with, 0 when it accepted it.
func dialCode(t *testing.T, n *node.Node, service, token string) websocket.StatusCode {
	t.Helper()
	c, err := dial(t, n, service, token)
	if err == nil {
		c.close()
		return 0
	}
	code := websocket.CloseStatus(err)
	if code == -1 {
		t.Fatalf("dial: %v", err)
	}
	return code
}

func (c *client) read(ctx context.Context) (frame, error) {
	_, data, err := c.conn.Read(ctx)
	if err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		return frame{}, fmt.Errorf("frame %q: %w", data, err)
	}
	return f, nil
}

func (c *client) close() { _ = c.conn.Close(websocket.StatusNormalClosure, "") }

// roundTrip sends a message with id and expects, in any order, its ack and
// the echo example's direct reply, then its broadcast (which the backend
// publishes after the direct, so it comes after it). It returns false when
// DMB answers the message with "backend unavailable".
func (c *client) roundTrip(id int) bool {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ok, err := c.exchange(ctx, id)
	if err != nil {
		c.t.Fatal(err)
	}
	return ok
}

// exchange is roundTrip within ctx; it returns the error of a read that
// failed (ctx ended first) instead of failing the test.
func (c *client) exchange(ctx context.Context, id int) (bool, error) {
	c.t.Helper()
	msg := fmt.Sprintf(`{"event":"dmb:message","data":{"x":1},"id":%d}`, id)
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return false, fmt.Errorf("write message %d: %w", id, err)
	}
	wantID := fmt.Sprint(id)
	var acked, replied, broadcast bool
	for !acked || !replied || !broadcast {
		f, err := c.read(ctx)
		if err != nil {
			return false, fmt.Errorf("waiting for the answers to message %d (ack %v, direct %v, broadcast %v): %w",
				id, acked, replied, broadcast, err)
		}
		switch f.Event {
		case "dmb:error":
			if string(f.ID) == wantID && !replied && (f.Error == "backend unavailable" || f.Error == "broker unavailable") {
				return false, nil
			}
			c.t.Fatalf("unexpected error frame %+v", f)
		case "dmb:ack":
			if string(f.ID) != wantID {
				c.t.Fatalf("ack %+v, want id %s", f, wantID)
			}
			acked = true
		case "dmb:direct":
			if string(f.ReplyTo) != wantID || !sameJSON(f.Data, `{"echo":{"x":1}}`) {
				c.t.Fatalf("direct: data %s, reply_to %s; want {\"echo\":{\"x\":1}}, %s", f.Data, f.ReplyTo, wantID)
			}
			replied = true
		case "dmb:broadcast":
			if !replied {
				c.t.Fatalf("broadcast before the direct reply")
			}
			want := fmt.Sprintf(`{"from":%q,"data":{"x":1}}`, c.cid)
			if !sameJSON(f.Data, want) {
				c.t.Fatalf("broadcast: data %s, want %s", f.Data, want)
			}
			broadcast = true
		default:
			c.t.Fatalf("unexpected frame %+v", f)
		}
	}
	return true, nil
}

// sameJSON reports whether got and want encode the same value.
func sameJSON(got json.RawMessage, want string) bool {
	var g, w any
	if json.Unmarshal(got, &g) != nil || json.Unmarshal([]byte(want), &w) != nil {
		return false
	}
	return reflect.DeepEqual(g, w)
}

// echoOnce connects a client once the example has registered and checks
// that its message gets ack, echo and broadcast.
func echoOnce(t *testing.T, n *node.Node) {
	t.Helper()
	c := dialAccepted(t, n, "echo", "")
	if !c.roundTrip(7) {
		t.Fatalf("message 7: backend unavailable")
	}
	c.close()
}

// echoAgain connects new clients and sends them a message each, from id
// on, until one gets its ack, echo and broadcast, within wait of what
// (an outage) ending. Until Redis and the example have healed, a message
// may get "backend unavailable" or "broker unavailable", or no echo (the
// example's publish was lost with the failed master): the client then
// tries again, as a real one would.
func echoAgain(t *testing.T, n *node.Node, id int, what string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for ; ; id++ {
		if time.Now().After(deadline) {
			t.Fatalf("no echo within %v of %s", wait, what)
		}
		c := dialAccepted(t, n, "echo", "")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok, err := c.exchange(ctx, id)
		cancel()
		c.close()
		if ok {
			return
		}
		if err == nil {
			err = errors.New("backend or broker unavailable")
		}
		t.Logf("message %d: %v; connecting again", id, err)
	}
}

// TestEchoFollowsAClusterFailover runs each echo example on a Redis
// Cluster (REDIS_CLUSTER_ADDRS), checks its answers, then fails the master
// that serves its uplink channel and checks it recovers by itself.
func TestEchoFollowsAClusterFailover(t *testing.T) {
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			ex.check(t)
			rc := redistest.StartCluster(t, 3, 1)
			n := startNode(t, nil, func(c *config.Config) { c.RedisClusterAddrs = rc.Addrs() })
			startExample(t, ex, []string{"REDIS_CLUSTER_ADDRS=" + strings.Join(rc.Addrs(), ",")})

			echoOnce(t, n)

			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			bkids, err := rc.Client().SMembers(ctx, "{dmb}:service:echo").Result()
			if err != nil || len(bkids) != 1 {
				t.Fatalf("the backends of echo: %v, %v; want one", bkids, err)
			}
			start := time.Now()
			old := rc.FailMaster("dmb:uplink:" + bkids[0])
			t.Logf("%s: %s, master of dmb:uplink:%s, replaced in %v", ex.name, old, bkids[0], time.Since(start).Round(time.Millisecond))
			echoAgain(t, n, 8, "the failover")
			t.Logf("%s: echo again %v after the master was killed", ex.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestEchoFollowsASentinelFailover runs each echo example behind Sentinel
// (REDIS_SENTINEL_ADDRS, REDIS_SENTINEL_MASTER), checks its answers, then
// kills the master and checks it follows the promoted replica by itself.
func TestEchoFollowsASentinelFailover(t *testing.T) {
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			ex.check(t)
			st := redistest.StartSentinel(t)
			n := startNode(t, nil, func(c *config.Config) {
				c.RedisSentinelAddrs, c.RedisSentinelMaster = st.Addrs(), st.Name
			})
			startExample(t, ex, []string{
				"REDIS_SENTINEL_ADDRS=" + strings.Join(st.Addrs(), ","), "REDIS_SENTINEL_MASTER=" + st.Name,
			})

			echoOnce(t, n)

			start := time.Now()
			st.Master.Kill()
			st.WaitPromoted()
			t.Logf("%s: replica promoted %v after the master was killed", ex.name, time.Since(start).Round(time.Millisecond))
			echoAgain(t, n, 8, "the failover")
			t.Logf("%s: echo again %v after the master was killed", ex.name, time.Since(start).Round(time.Millisecond))
		})
	}
}
