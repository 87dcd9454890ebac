package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/node"
)

// procNode is a node in a process of its own, so that a test can kill it
// with SIGKILL: it closes nothing, tells nobody.
type procNode struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	id   string
}

// nodeProcessEnv carries a process node's configuration, as JSON.
const nodeProcessEnv = "DMB_TEST_NODE_PROCESS"

// TestNodeProcess is not a test: it is the body of a process node, run by
// startNodeProcess in a copy of the test binary.
func TestNodeProcess(t *testing.T) {
	raw := os.Getenv(nodeProcessEnv)
	if raw == "" {
		t.Skip("runs only as a process node")
	}
	var cfg config.Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(cfg, node.Options{Logger: nodetest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := n.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// startNodeProcess starts a process node on the env's Redis and waits
// until it is ready. It is killed when the test ends.
func (e *env) startNodeProcess(mutate ...func(*config.Config)) *procNode {
	e.t.Helper()
	cfg := e.baseConfig()
	cfg.AdminAddr = ""
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Port = ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	for _, f := range mutate {
		f(&cfg)
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNodeProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), nodeProcessEnv+"="+string(raw))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	proctest.DieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start a process node: %v", err)
	}
	p := &procNode{t: e.t, cmd: cmd, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)), id: cfg.NodeID}
	e.t.Cleanup(p.kill)
	registerTCP(e.t, p.addr, cfg.TCPAddr())
	eventually(e.t, "process node ready", func() bool {
		res, err := http.Get("http://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		_ = res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return p
}

func (p *procNode) wsURL(service string) string { return "ws://" + p.addr + "/ws/" + service }

// kill kills the node with SIGKILL and waits for it.
func (p *procNode) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// nodeLost matches the client_disconnected of a client of a lost node.
func nodeLost(cid string) func(backend.Event) bool {
	return func(ev backend.Event) bool { return ev.Type == "client_disconnected" && ev.CID == cid }
}

// lostClients kills a process node holding 5 clients, with survivors
// other nodes, and checks that the backend hears each client left,
// exactly once, within 3 x the backend timeout.
func lostClients(t *testing.T, e *env, survivors int, restart bool) {
	timeout := time.Second
	short := func(c *config.Config) { c.BackendTimeout = timeout }
	for range survivors {
		e.startNode(short)
	}
	victim := e.startNodeProcess(short)
	b := e.startBackend("chat")
	var cids []string
	for range 5 {
		c := connectURL(t, victim.wsURL("chat"), nil).welcome()
		cids = append(cids, c.cid)
		b.next(ofTypeCID("client_connected", c.cid))
	}
	victim.kill()
	died := time.Now()
	if restart {
		e.startNodeProcess(func(c *config.Config) { short(c); c.NodeID = victim.id })
	}
	for _, cid := range cids {
		ev := b.next(nodeLost(cid))
		if ev.Code != 1006 || ev.Reason != "node lost" || ev.Node != victim.id {
			t.Fatalf("client_disconnected of %s: code %d reason %q node %q; want 1006, node lost, %s", cid, ev.Code, ev.Reason, ev.Node, victim.id)
		}
	}
	if took := time.Since(died); took > 3*timeout {
		t.Fatalf("the clients of the dead node were reported after %v, more than 3 x %v", took, timeout)
	}
	// Exactly once: nothing more for them once every node has looked
	// again (a marker after two more heartbeats).
	waitBeats(t, e, 2*timeout)
	b.caughtUp()
	for _, ev := range b.held {
		for _, cid := range cids {
			if ev.CID == cid {
				t.Fatalf("%s reported again: %+v", cid, ev)
			}
		}
	}
}

// waitBeats returns once d has passed on Redis's clock, which the nodes'
// beats follow.
func waitBeats(t *testing.T, e *env, d time.Duration) {
	t.Helper()
	start, err := e.rdb.Time(e.ctx()).Result()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, fmt.Sprintf("%v on Redis's clock", d), func() bool {
		now, err := e.rdb.Time(e.ctx()).Result()
		return err == nil && now.Sub(start) >= d
	})
}

func TestClientsOfAKilledNodeAreReportedOnceWithOneSurvivor(t *testing.T) {
	lostClients(t, newEnv(t), 1, false)
}

func TestClientsOfAKilledNodeAreReportedOnceWithTwoSurvivors(t *testing.T) {
	lostClients(t, newEnv(t), 2, false)
}

func TestClientsOfAKilledNodeAreReportedByTheNodeRestartedInItsPlace(t *testing.T) {
	lostClients(t, newEnv(t), 0, true)
}
