package clients_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

// The rooms tests run each library's backend in a driver: a small program
// that registers the service chat, runs the library's event loop, and
// executes one command a line from its standard input, one of
//
//	{"op":"join"|"leave","room":...,"cid":...,"user":...}
//	{"op":"room","room":...,"data":...,"except":[...]}
//	{"op":"broadcast","data":...,"except":[...]}   (without except: the old call)
//	{"op":"presence","room":...,"count_only":...}
//	{"op":"publish","command":{...},"live_only":...} (without live_only: the backend's default)
//
// answering {"result":...} or {"error":"..."} on a line of its standard
// output. A client message "who" is answered from the event handler with
// a presence count of the service. It prints {"ready":bkid} once listening, {"event":...} for
// every event the library hands to the application, and {"log":...} for each warning or
// error the library logs, in order with the rest. With a second argument, live-only, the
// backend publishes live-only by default. The Go library runs in the test's process behind
// the same driver (startGoDriver).

const roomsSecret = "0123456789abcdef0123456789abcdef"

const pythonDriver = `
import json, logging, sys, threading, redis
from dmb_backend import Backend

out_lock = threading.Lock()
def say(v):
    with out_lock:
        sys.stdout.write(json.dumps(v) + "\n")
        sys.stdout.flush()

class Say(logging.Handler):
    def emit(self, record):
        say({"log": record.levelname + " " + record.getMessage()})
logging.getLogger("dmb_backend").addHandler(Say())

b = Backend(redis.Redis(host="127.0.0.1", port=int(sys.argv[1])), "chat", register_timeout=2.0,
            live_only=sys.argv[2:] == ["live-only"])
b.register()
def on_event(ev):
    say({"event": ev})
    if ev.get("type") == "message" and ev.get("data") == "who":  # presence from the handler
        b.direct(ev["cid"], b.presence(count_only=True, timeout=10.0), reply_to=ev.get("id"))

loop = threading.Thread(target=b.run, args=(on_event,), daemon=True)
loop.start()
say({"ready": b.bkid})
for line in sys.stdin:
    c = json.loads(line)
    op = c["op"]
    try:
        if op in ("join", "leave"):
            r = getattr(b, op)(c["room"], cid=c.get("cid"), user=c.get("user"))
        elif op == "room":
            r = b.room(c["room"], c.get("data"), except_=c.get("except"))
        elif op == "broadcast":
            r = b.broadcast(c.get("data"), except_=c["except"]) if "except" in c else b.broadcast(c.get("data"))
        elif op == "presence":
            r = b.presence(c.get("room"), count_only=c.get("count_only", False), timeout=c.get("timeout", 10.0))
        elif op == "publish":
            r = b.publish(c["command"], live_only=c.get("live_only"))
        else:
            raise ValueError("unknown op " + op)
        say({"result": r})
    except Exception as e:
        say({"error": "%s: %s" % (type(e).__name__, e)})
b.stop()
loop.join()
`

const nodeDriver = `
import { createClient } from 'redis';
import { createInterface } from 'node:readline';
import { Backend } from '@dmb/backend';

const say = (v) => process.stdout.write(JSON.stringify(v) + '\n');
const client = createClient({ socket: { host: '127.0.0.1', port: Number(process.argv[1]) } });
const log = (level) => (msg) => say({ log: level + ' ' + msg });
const b = new Backend(client, 'chat', {
  registerTimeout: 2000, liveOnly: process.argv[2] === 'live-only',
  logger: { info() {}, warn: log('WARNING'), error: log('ERROR') },
});
await client.connect();
await b.register();
const running = b.run(async (ev) => {
  say({ event: ev });
  if (ev.type === 'message' && ev.data === 'who') { // presence from the handler
    await b.direct(ev.cid, await b.presence(null, { countOnly: true, timeout: 10000 }), ev.id);
  }
});
await b.ready;
say({ ready: b.bkid });
for await (const line of createInterface({ input: process.stdin })) {
  const c = JSON.parse(line);
  try {
    let r;
    switch (c.op) {
      case 'join': r = await b.join(c.room, { cid: c.cid, user: c.user }); break;
      case 'leave': r = await b.leave(c.room, { cid: c.cid, user: c.user }); break;
      case 'room': r = await b.room(c.room, c.data, { except: c.except }); break;
      case 'broadcast': r = await ('except' in c ? b.broadcast(c.data, { except: c.except }) : b.broadcast(c.data)); break;
      case 'presence': r = await b.presence(c.room, { countOnly: c.count_only, timeout: (c.timeout ?? 10) * 1000 }); break;
      case 'publish': r = await b.publish(c.command, 'live_only' in c ? { liveOnly: c.live_only } : undefined); break;
      default: throw new Error('unknown op ' + c.op);
    }
    say({ result: r ?? null });
  } catch (err) {
    say({ error: err.message });
  }
}
b.stop();
await running;
await client.close();
`

// driver is a running driver process.
type driver struct {
	t       *testing.T
	stdin   io.Writer
	results chan map[string]json.RawMessage
	events  chan map[string]any
	out     *nodetest.Buffer // stderr, shown when the test fails
	logs    *nodetest.Buffer // the library's warnings and errors, a line each
}

func startDriver(t *testing.T, dir string, env []string, argv ...string) *driver {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	d := &driver{t: t, results: make(chan map[string]json.RawMessage, 100), events: make(chan map[string]any, 1000),
		out: &nodetest.Buffer{}, logs: &nodetest.Buffer{}}
	cmd.Stderr = d.out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.stdin = stdin
	proctest.DieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line map[string]json.RawMessage
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				d.out.Write([]byte("driver printed " + sc.Text() + "\n"))
				continue
			}
			if ev, ok := line["event"]; ok {
				var m map[string]any
				_ = json.Unmarshal(ev, &m)
				d.events <- m
				continue
			}
			if l, ok := line["log"]; ok {
				d.logs.Write(append(l, '\n'))
				continue
			}
			d.results <- line
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close() // the driver stops at the end of its input
		done := make(chan error, 1)
		go func() { <-read; done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver exited with %v", err)
			}
		case <-time.After(nodetest.Wait):
			t.Errorf("driver did not stop at the end of its input")
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("driver's standard error:\n%s\nthe library's log:\n%s", d.out, d.logs)
		}
	})
	return d
}

// next returns the driver's next line that is not an event.
func (d *driver) next() map[string]json.RawMessage {
	d.t.Helper()
	select {
	case line := <-d.results:
		return line
	case <-time.After(nodetest.Wait):
		d.t.Fatalf("driver did not answer; its standard error:\n%s", d.out)
	}
	return nil
}

// do runs one command and decodes its result into result (when not nil).
func (d *driver) do(cmd map[string]any, result any) {
	d.t.Helper()
	b, _ := json.Marshal(cmd)
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		d.t.Fatalf("write to the driver: %v", err)
	}
	line := d.next()
	if e, ok := line["error"]; ok {
		d.t.Fatalf("%s: %s", b, e)
	}
	if result != nil {
		if err := json.Unmarshal(line["result"], result); err != nil {
			d.t.Fatalf("%s: result %s: %v", b, line["result"], err)
		}
	}
}

// fails runs one command that must fail.
func (d *driver) fails(cmd map[string]any) {
	d.t.Helper()
	b, _ := json.Marshal(cmd)
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		d.t.Fatalf("write to the driver: %v", err)
	}
	if line := d.next(); line["error"] == nil {
		d.t.Fatalf("%s: %s, want an error", b, line["result"])
	}
}

// event returns the next event the library handed to the application of
// type typ, and fails on a presence answer on the way.
func (d *driver) event(typ string) map[string]any {
	d.t.Helper()
	timeout := time.After(nodetest.Wait)
	for {
		select {
		case ev := <-d.events:
			if ev["type"] == "presence" {
				d.t.Fatalf("the application got a presence answer: %v", ev)
			}
			if ev["type"] == typ {
				return ev
			}
		case <-timeout:
			d.t.Fatalf("no %s event", typ)
		}
	}
}

// presenceResult is what presence returns in either library.
type presenceResult struct {
	Room      *string          `json:"room"`
	Members   []map[string]any `json:"members"`
	Count     int              `json:"count"`
	Nodes     []string         `json:"nodes"`
	Complete  bool             `json:"complete"`
	Truncated bool             `json:"truncated"`
}

// wsClient is one client of a node.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
	cid  string
}

func dialClient(t *testing.T, n *nodetest.Node, user string, rooms ...string) *wsClient {
	t.Helper()
	tok, err := auth.MintRooms(roomsSecret, user, time.Minute, rooms)
	if err != nil {
		t.Fatal(err)
	}
	conn, f := dialAdmitted(t, n.WSURL("chat")+"?token="+url.QueryEscape(tok))
	c := &wsClient{t: t, conn: conn}
	if f["event"] != "dmb:connected" {
		t.Fatalf("first frame %v", f)
	}
	c.cid = f["cid"].(string)
	return c
}

// expect reads the next frame and checks its event, room and data (a JSON
// text; "" for none).
func (c *wsClient) expect(event, room, data string) {
	c.t.Helper()
	f := nodetest.ReadJSON(c.t, c.conn)
	for f["event"] == "dmb:session" { // a fresh session token after a membership change
		f = nodetest.ReadJSON(c.t, c.conn)
	}
	var want any
	if data != "" {
		_ = json.Unmarshal([]byte(data), &want)
	}
	gotRoom, _ := f["room"].(string)
	if f["event"] != event || gotRoom != room || data != "" && !reflect.DeepEqual(f["data"], want) {
		c.t.Fatalf("frame %v, want %s room %q data %s", f, event, room, data)
	}
}

func (c *wsClient) send(frame string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatal(err)
	}
}

// TestLibrariesRoomsAndPresence runs the rooms of each backend library
// against two real nodes on a real Redis: join by cid and by user, room and
// broadcast with except (and the old broadcast), leave, presence gathered
// from both nodes into one result, count_only, and room_joined handed to
// the application while presence answers are not.
// library is one backend library's driver.
type library struct {
	name string
	dir  string
	env  []string
	argv []string
}

func libraries(t *testing.T) []library {
	return []library{
		{"python", t.TempDir(), []string{"PYTHONPATH=" + abs(t, "python"), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"},
			[]string{"/usr/bin/python3", "-c", pythonDriver}},
		{"node", "..", nil, []string{"node", "--input-type=module", "-e", nodeDriver}},
	}
}

// goLibrary is the Go library, run in the test's process behind a driver
// (startGoDriver).
var goLibrary = library{name: "go"}

// start starts the library's driver on the Redis rs, with args after the
// port, and returns it once it listens, with its bkid.
func (lib library) start(t *testing.T, rs *redistest.Server, args ...string) (*driver, string) {
	t.Helper()
	if lib.name == goLibrary.name {
		return startGoDriver(t, rs, args...)
	}
	d := startDriver(t, lib.dir, lib.env, append(append(lib.argv, strconv.Itoa(rs.Port())), args...)...)
	ready := d.next()
	var bkid string
	if json.Unmarshal(ready["ready"], &bkid) != nil || bkid == "" {
		t.Fatalf("driver's first line %v, want ready", ready)
	}
	return d, bkid
}

func TestLibrariesRoomsAndPresence(t *testing.T) {
	for _, lib := range libraries(t) {
		t.Run(lib.name, func(t *testing.T) {
			rs := redistest.Start(t)
			var nodes []*nodetest.Node
			for range 2 {
				cfg := nodetest.Config(t, rs)
				cfg.JWTSecret = roomsSecret
				nodes = append(nodes, nodetest.Start(t, cfg, node.Options{}))
			}
			n1, n2 := nodes[0], nodes[1]
			d, _ := lib.start(t, rs)
			a := dialClient(t, n1, "alice", "game-*")
			c := dialClient(t, n2, "carol")
			o := dialClient(t, n2, "bob")

			d.do(map[string]any{"op": "join", "room": "lobby", "cid": a.cid}, nil)
			d.do(map[string]any{"op": "join", "room": "lobby", "user": "carol"}, nil)
			d.do(map[string]any{"op": "room", "room": "lobby", "data": map[string]int{"n": 1}}, nil)
			d.do(map[string]any{"op": "room", "room": "lobby", "data": 2, "except": []string{a.cid}}, nil)
			d.do(map[string]any{"op": "broadcast", "data": 3, "except": []string{a.cid, o.cid}}, nil)
			d.do(map[string]any{"op": "broadcast", "data": 4}, nil)
			a.expect("dmb:joined", "lobby", "")
			a.expect("dmb:room", "lobby", `{"n":1}`)
			a.expect("dmb:broadcast", "", "4")
			c.expect("dmb:joined", "lobby", "")
			c.expect("dmb:room", "lobby", `{"n":1}`)
			c.expect("dmb:room", "lobby", "2")
			c.expect("dmb:broadcast", "", "3")
			c.expect("dmb:broadcast", "", "4")
			o.expect("dmb:broadcast", "", "4")
			d.fails(map[string]any{"op": "join", "room": "no spaces", "cid": a.cid})
			d.fails(map[string]any{"op": "join", "room": "lobby"})

			// Each node counts the other from its beats within a second.
			nodetest.Eventually(t, "both nodes count 2 nodes", func() bool {
				return metric(t, n1, "dmb_nodes") == 2 && metric(t, n2, "dmb_nodes") == 2
			})
			var p presenceResult
			d.do(map[string]any{"op": "presence", "room": "lobby"}, &p)
			slices.SortFunc(p.Members, func(x, y map[string]any) int { return strings.Compare(fmt.Sprint(x["user"]), fmt.Sprint(y["user"])) })
			slices.Sort(p.Nodes)
			wantNodes := []string{n1.ID, n2.ID}
			slices.Sort(wantNodes)
			want := []map[string]any{{"cid": a.cid, "user": "alice"}, {"cid": c.cid, "user": "carol"}}
			if p.Count != 2 || p.Room == nil || *p.Room != "lobby" || !slices.Equal(p.Nodes, wantNodes) || !reflect.DeepEqual(p.Members, want) {
				t.Fatalf("presence of lobby %+v", p)
			}
			p = presenceResult{}
			d.do(map[string]any{"op": "presence", "count_only": true}, &p)
			if !p.Complete || p.Count != 3 || p.Members != nil || len(p.Nodes) != 2 {
				t.Fatalf("count of the service %+v, want 3 from 2 nodes", p)
			}
			p = presenceResult{}
			d.do(map[string]any{"op": "presence", "room": "empty"}, &p)
			if !p.Complete || p.Count != 0 || p.Members == nil || len(p.Members) != 0 {
				t.Fatalf("presence of an empty room %+v", p)
			}
			d.fails(map[string]any{"op": "presence", "room": "a b"})

			// The handler may ask for presence: its answers do not wait
			// behind it.
			o.send(`{"event":"dmb:message","data":"who","id":9}`)
			for {
				f := nodetest.ReadJSON(t, o.conn)
				if f["event"] == "dmb:ack" {
					continue
				}
				got, _ := f["data"].(map[string]any)
				if f["event"] != "dmb:direct" || f["reply_to"] != float64(9) || got["complete"] != true || got["count"] != float64(3) {
					t.Fatalf("answer to who %v, want a direct with a complete count of 3", f)
				}
				break
			}

			d.do(map[string]any{"op": "leave", "room": "lobby", "cid": c.cid}, nil)
			c.expect("dmb:left", "lobby", "")
			p = presenceResult{}
			d.do(map[string]any{"op": "presence", "room": "lobby", "count_only": true}, &p)
			if !p.Complete || p.Count != 1 {
				t.Fatalf("lobby after a leave %+v, want 1", p)
			}
			// A node that beats but does not answer (one that died since its
			// last beat): presence ends at its timeout, incomplete, with the
			// answers it has.
			ghost(t, rs)
			nodetest.Eventually(t, "both nodes count 3 nodes", func() bool {
				return metric(t, n1, "dmb_nodes") == 3 && metric(t, n2, "dmb_nodes") == 3
			})
			p = presenceResult{}
			start := time.Now()
			d.do(map[string]any{"op": "presence", "room": "lobby", "timeout": 0.3}, &p)
			if p.Complete || p.Count != 1 || len(p.Nodes) != 2 {
				t.Fatalf("presence with a node that does not answer %+v, want incomplete, 1 member from 2 nodes", p)
			}
			if took := time.Since(start); took < 250*time.Millisecond || took > 5*time.Second {
				t.Fatalf("presence with a node that does not answer took %v, want its timeout, 300ms", took)
			}

			// A client joining by itself reaches the application, after
			// every presence answer above (the uplink keeps its order):
			// none of those did.
			a.send(`{"event":"dmb:join","room":"game-7","id":1}`)
			a.expect("dmb:joined", "game-7", "")
			if ev := d.event("room_joined"); ev["cid"] != a.cid || ev["room"] != "game-7" || ev["user"] != "alice" {
				t.Fatalf("room_joined %v", ev)
			}
			a.send(`{"event":"dmb:leave","room":"game-7","id":2}`)
			if ev := d.event("room_left"); ev["cid"] != a.cid || ev["room"] != "game-7" {
				t.Fatalf("room_left %v", ev)
			}
		})
	}
}

// startGoDriver runs a backend of the Go library in the test's process,
// behind a driver: each command line written to the driver is run at once
// and answered on its results, events and warnings are what the drivers
// print. It knows the ops broadcast and publish, and the argument
// live-only.
func startGoDriver(t *testing.T, rs *redistest.Server, args ...string) (*driver, string) {
	t.Helper()
	d := &driver{t: t, results: make(chan map[string]json.RawMessage, 100), events: make(chan map[string]any, 1000),
		out: &nodetest.Buffer{}, logs: &nodetest.Buffer{}}
	b := backend.New(rs.Client(), "chat", backend.Options{
		Logger:   slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		LiveOnly: slices.Equal(args, []string{"live-only"}),
	})
	d.stdin = goCommands{b: b, results: d.results}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Run(ctx, func(_ context.Context, ev backend.Event) {
			var m map[string]any
			raw, _ := json.Marshal(ev)
			_ = json.Unmarshal(raw, &m)
			d.events <- m
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("Go backend: %v", err)
	case <-time.After(nodetest.Wait):
		t.Fatal("Go backend not registered")
	}
	return d, b.BKID()
}

// goCommands runs the drivers' command lines on a backend of the Go
// library.
type goCommands struct {
	b       *backend.Backend
	results chan<- map[string]json.RawMessage
}

func (g goCommands) Write(line []byte) (int, error) {
	var c struct {
		Op       string          `json:"op"`
		Data     any             `json:"data"`
		Command  backend.Command `json:"command"`
		LiveOnly bool            `json:"live_only"`
	}
	err := json.Unmarshal(line, &c)
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	switch {
	case err != nil:
	case c.Op == "broadcast":
		err = g.b.Broadcast(ctx, c.Data)
	case c.Op == "publish":
		c.Command.LiveOnly = c.LiveOnly
		err = g.b.Publish(ctx, c.Command)
	default:
		err = fmt.Errorf("unknown op %s", c.Op)
	}
	answer := map[string]json.RawMessage{"result": json.RawMessage("null")}
	if err != nil {
		msg, _ := json.Marshal(err.Error())
		answer = map[string]json.RawMessage{"error": msg}
	}
	g.results <- answer
	return len(line), nil
}

// fallbackWarnings counts the warnings in a library's log that it
// publishes live-only because Redis cannot run DMB's function.
func fallbackWarnings(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "WARN") && strings.Contains(line, "Redis cannot run DMB's "+history.Function+" function") {
			n++
		}
	}
	return n
}

// sessionClient is a client of a node without auth that keeps what a
// resume needs: its session token and its last offset.
type sessionClient struct {
	*wsClient
	session, offset string
}

// dialSession connects to rawURL and returns the client and its
// dmb:connected.
func dialSession(t *testing.T, rawURL string) (*sessionClient, map[string]any) {
	t.Helper()
	conn, f := dialAdmitted(t, rawURL)
	c := &sessionClient{wsClient: &wsClient{t: t, conn: conn}}
	c.keep(f)
	if f["event"] != "dmb:connected" || f["session"] == nil {
		t.Fatalf("first frame %v, want dmb:connected with a session", f)
	}
	c.cid, _ = f["cid"].(string)
	return c, f
}

// next reads a frame, keeping its session and offset.
func (c *sessionClient) next() map[string]any {
	c.t.Helper()
	f := nodetest.ReadJSON(c.t, c.conn)
	c.keep(f)
	return f
}

// keep notes the session and offset a frame carries.
func (c *sessionClient) keep(f map[string]any) {
	if s, ok := f["session"].(string); ok {
		c.session = s
	}
	if o, ok := f["offset"].(string); ok {
		c.offset = o
	}
}

// dialAdmitted connects a client and returns it with its first frame,
// connecting again, as clients do, while the node answers 4503: a backend
// is live once its uplink is subscribed, and a library's driver may say it
// is ready a moment before its run loop has subscribed.
func dialAdmitted(t *testing.T, rawURL string) (*websocket.Conn, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	retry := time.NewTicker(20 * time.Millisecond)
	defer retry.Stop()
	for {
		conn, _, err := websocket.Dial(ctx, rawURL, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", rawURL, err)
		}
		_, data, err := conn.Read(ctx)
		if err == nil {
			t.Cleanup(func() { _ = conn.CloseNow() })
			var f map[string]any
			if err := json.Unmarshal(data, &f); err != nil {
				t.Fatalf("first frame %q: %v", data, err)
			}
			return conn, f
		}
		_ = conn.CloseNow()
		if websocket.CloseStatus(err) != 4503 {
			t.Fatalf("first frame from %s: %v", rawURL, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s still answers 4503 after %v", rawURL, nodetest.Wait)
		case <-retry.C:
		}
	}
}

// broadcast reads the next frame, a broadcast of data, and returns its
// offset ("" for none).
func (c *sessionClient) broadcast(data string) string {
	c.t.Helper()
	f := c.next()
	if f["event"] != "dmb:broadcast" || f["data"] != data {
		c.t.Fatalf("frame %v, want the broadcast %q", f, data)
	}
	o, _ := f["offset"].(string)
	return o
}

// TestLibrariesPublishRecoverably runs each backend library (Go too) against a real
// node: its commands are recoverable by default (clients get an offset,
// and a client that resumes gets what it missed), live-only per command or
// per backend, and published with PUBLISH, with one warning, while Redis
// has no DMB function; its events say resumable and resumed.
func TestLibrariesPublishRecoverably(t *testing.T) {
	for _, lib := range append([]library{goLibrary}, libraries(t)...) {
		t.Run(lib.name, func(t *testing.T) {
			rs := redistest.Start(t)
			n := nodetest.Start(t, nodetest.Config(t, rs), node.Options{})
			d, bkid := lib.start(t, rs)
			recoverable := func(o string) bool { return strings.HasPrefix(o, bkid+":") }
			broadcast := func(data string) { d.do(map[string]any{"op": "broadcast", "data": data}, nil) }

			c, _ := dialSession(t, n.WSURL("chat"))
			if ev := d.event("client_connected"); ev["cid"] != c.cid || ev["resumed"] == true {
				t.Fatalf("client_connected %v of a new client", ev)
			}
			broadcast("kept")
			if o := c.broadcast("kept"); !recoverable(o) {
				t.Fatalf("broadcast offset %q, want one of backend %s's history", o, bkid)
			}
			live := map[string]any{"op": "publish", "command": map[string]any{"type": "broadcast", "data": "live"}, "live_only": true}
			d.do(live, nil)
			if o := c.broadcast("live"); o != "" {
				t.Fatalf("a live-only command came with offset %q", o)
			}

			// The client drops, and comes back with what it missed: the
			// recoverable broadcast, not the live-only one.
			_ = c.conn.CloseNow()
			if ev := d.event("client_disconnected"); ev["cid"] != c.cid || ev["resumable"] != true {
				t.Fatalf("client_disconnected %v, want resumable", ev)
			}
			broadcast("missed")
			d.do(live, nil)
			r, f := dialSession(t, n.WSURL("chat")+"?"+url.Values{"resume": {c.session}, "offset": {c.offset}}.Encode())
			if f["resumed"] != true || f["recovered"] != true || r.cid != c.cid {
				t.Fatalf("resume answered %v, want the session of %s resumed and recovered", f, c.cid)
			}
			if ev := d.event("client_connected"); ev["cid"] != c.cid || ev["resumed"] != true {
				t.Fatalf("client_connected %v after a resume, want resumed", ev)
			}
			if o := r.broadcast("missed"); !recoverable(o) {
				t.Fatalf("the missed broadcast came with offset %q", o)
			}
			broadcast("after")
			r.broadcast("after")

			// Without DMB's function (a Redis that lost it, an older DMB):
			// PUBLISH, and one warning; the function again once it is back.
			rdb := rs.Client()
			ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
			defer cancel()
			if err := rdb.FunctionDelete(ctx, "dmb").Err(); err != nil {
				t.Fatal(err)
			}
			for _, data := range []string{"fallback 1", "fallback 2"} {
				broadcast(data)
				if o := r.broadcast(data); o != "" {
					t.Fatalf("a broadcast without the function came with offset %q", o)
				}
			}
			if w := fallbackWarnings(d.logs.String()); w != 1 {
				t.Fatalf("%d warnings, want 1:\n%s", w, d.logs)
			}
			if err := history.Load(ctx, rdb, history.Config{Size: history.DefaultSize, TTL: history.DefaultTTL}); err != nil {
				t.Fatal(err)
			}
			broadcast("back")
			if o := r.broadcast("back"); !recoverable(o) {
				t.Fatalf("broadcast once the function is back came with offset %q", o)
			}

			// A backend live-only by default: its broadcasts reach every
			// client of the service, without an offset.
			d2, _ := lib.start(t, rs, "live-only")
			d2.do(map[string]any{"op": "broadcast", "data": "live backend"}, nil)
			if o := r.broadcast("live backend"); o != "" {
				t.Fatalf("a live-only backend's broadcast came with offset %q", o)
			}
		})
	}
}

// metric reads one series of a node's /metrics, 0 when absent.
func metric(t *testing.T, n *nodetest.Node, series string) float64 {
	t.Helper()
	resp, err := http.Get(n.URL("/metrics"))
	if err != nil {
		t.Fatalf("get metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// ghost beats in Redis as a DMB node would, without being one, until the
// test ends: the nodes count it among the live ones, and it answers
// nothing.
func ghost(t *testing.T, rs *redistest.Server) {
	rdb := rs.Client()
	ctx, cancel := context.WithCancel(context.Background())
	beat := func() error {
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			return err
		}
		return rdb.ZAdd(ctx, "{dmb}:nodes", redis.Z{Score: float64(now.UnixMilli()), Member: "ghost/1"}).Err()
	}
	if err := beat(); err != nil {
		t.Fatalf("ghost beat: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = beat()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = rdb.ZRem(context.Background(), "{dmb}:nodes", "ghost/1").Err()
		_ = rdb.Close()
	})
}
