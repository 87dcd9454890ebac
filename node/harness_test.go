package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
	"github.com/dmb-broker/dmb/pubsub"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

// wait is how long any awaited event may take before a test fails.
const wait = nodetest.Wait

var (
	testLogger = nodetest.Logger
	eventually = nodetest.Eventually
)

// env is one Redis deployment and whatever a test starts on it. By default
// it is a Redis of the test's own; the contract suite (topology_test.go)
// runs tests on a cluster and behind Sentinel too.
type env struct {
	t     *testing.T
	redis *redistest.Server // the single server; nil on other topologies
	topo  *topology
	rdb   redis.UniversalClient
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if topo := currentTopology; topo != nil {
		return topo.env(t)
	}
	s := redistest.Start(t)
	return &env{t: t, redis: s, rdb: s.Client(), topo: single(s)}
}

// client returns a new Redis client for the deployment, closed when the
// test ends: a backend's own connection.
func (e *env) client() redis.UniversalClient {
	c := e.topo.client()
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// publish publishes as a backend in another language would: PUBLISH, or
// SPUBLISH on a cluster.
func (e *env) publish(ctx context.Context, channel, payload string) error {
	return pubsub.Publish(ctx, e.rdb, e.topo.sharded, channel, payload).Err()
}

// subscribe subscribes as a backend in another language would (SUBSCRIBE,
// or SSUBSCRIBE on a cluster) and waits for the confirmation.
func (e *env) subscribe(ctx context.Context, channel string) *redis.PubSub {
	e.t.Helper()
	var ps *redis.PubSub
	if e.topo.sharded {
		ps = e.rdb.SSubscribe(ctx, channel)
	} else {
		ps = e.rdb.Subscribe(ctx, channel)
	}
	if _, err := ps.Receive(ctx); err != nil {
		e.t.Fatalf("subscribe to %s: %v", channel, err)
	}
	return ps
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	e.t.Cleanup(cancel)
	return ctx
}

// testNode is one in-process DMB node.
type testNode struct {
	*nodetest.Node
	t  *testing.T
	id string
}

// baseConfig is the configuration tests start from: nodetest's, with the
// admin listener on a free port.
func (e *env) baseConfig() config.Config {
	cfg := nodetest.Config(e.t, e.redis)
	cfg.AdminAddr = "127.0.0.1:0"
	e.topo.configure(&cfg)
	if tr := currentTransport; tr != nil {
		tr.configure(e.t, &cfg)
	}
	return cfg
}

// noFrameRate lifts the per-client frame rate, for a test whose clients
// send faster than a person would.
func noFrameRate(c *config.Config) { c.ClientRate = 0 }

// startNode starts a node and waits until it is ready.
func (e *env) startNode(mutate ...func(*config.Config)) *testNode {
	e.t.Helper()
	return e.startNodeLogging(nil, mutate...)
}

// startNodeLogging starts a node that logs to log (nil: nodetest's).
func (e *env) startNodeLogging(log *slog.Logger, mutate ...func(*config.Config)) *testNode {
	e.t.Helper()
	cfg := e.baseConfig()
	for _, f := range mutate {
		f(&cfg)
	}
	n := nodetest.Start(e.t, cfg, node.Options{Logger: log})
	if a := n.TCPAddr(); a != nil {
		registerTCP(e.t, n.Addr().String(), a.String())
	}
	return &testNode{Node: n, t: e.t, id: cfg.NodeID}
}

// stop shuts the node down gracefully and returns Run's result.
func (n *testNode) stop() error { return n.Stop() }

func (n *testNode) url(path string) string { return "http://" + n.Addr().String() + path }
func (n *testNode) wsURL(service string) string {
	return "ws://" + n.Addr().String() + "/ws/" + service
}

// metric reads one series of the node's /metrics, 0 when absent.
func (n *testNode) metric(series string) float64 {
	n.t.Helper()
	resp, err := http.Get(n.url("/metrics"))
	if err != nil {
		n.t.Fatalf("get metrics: %v", err)
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

// testBackend is a backend run with the backend library, recording events.
type testBackend struct {
	*backend.Backend
	t       *testing.T
	rdb     redis.UniversalClient
	events  chan backend.Event
	held    []backend.Event // events next passed over, oldest first
	markers int             // caughtUp's markers so far
	cancel  context.CancelFunc
	done    chan struct{}
}

// startBackend registers a backend of service on its own Redis connection
// and waits until it listens.
func (e *env) startBackend(service string) *testBackend {
	e.t.Helper()
	rdb := e.topo.client()
	b := backend.New(rdb, service, backend.Options{Logger: testLogger(), RegisterTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	tb := &testBackend{Backend: b, t: e.t, rdb: rdb, events: make(chan backend.Event, 10000), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(tb.done)
		_ = b.Run(ctx, func(_ context.Context, ev backend.Event) {
			select {
			case tb.events <- ev:
			default:
				e.t.Errorf("backend %s: event buffer full", service)
			}
		})
	}()
	e.t.Cleanup(tb.stop)
	select {
	case <-b.Ready():
	case <-time.After(wait):
		e.t.Fatalf("backend %s not ready", service)
	}
	return tb
}

// stop ends the backend's Run and closes its Redis connection, as a crash
// would: its uplink subscription goes away without a bk_disconnect.
func (b *testBackend) stop() {
	b.cancel()
	<-b.done
	_ = b.rdb.Close()
}

// next returns the first event that matches; the others are kept, in
// order, for later calls.
func (b *testBackend) next(match func(backend.Event) bool) backend.Event {
	b.t.Helper()
	for i, ev := range b.held {
		if match(ev) {
			b.held = append(b.held[:i], b.held[i+1:]...)
			return ev
		}
	}
	timeout := time.After(wait)
	for {
		select {
		case ev := <-b.events:
			if match(ev) {
				return ev
			}
			b.held = append(b.held, ev)
		case <-timeout:
			b.t.Fatalf("backend %s: timed out waiting for an event", b.BKID())
		}
	}
}

// caughtUp returns once every event published to the backend before the
// call has reached it. Redis runs commands one at a time and a subscriber
// gets messages in that order (on a cluster a shard channel lives on one
// master), so a marker published now arrives after all of them. The events
// read on the way are kept for next.
func (b *testBackend) caughtUp() {
	b.t.Helper()
	b.markers++
	cid := fmt.Sprintf("marker-%d", b.markers)
	payload := fmt.Sprintf(`{"type":"test_marker","cid":%q}`, cid)
	if err := pubsub.Publish(context.Background(), b.rdb, pubsub.Sharded(b.rdb), "dmb:uplink:"+b.BKID(), payload).Err(); err != nil {
		b.t.Fatalf("publish a marker: %v", err)
	}
	b.next(ofTypeCID("test_marker", cid))
}

func ofType(typ string) func(backend.Event) bool {
	return func(ev backend.Event) bool { return ev.Type == typ }
}

func ofTypeCID(typ, cid string) func(backend.Event) bool {
	return func(ev backend.Event) bool { return ev.Type == typ && ev.CID == cid }
}

// frame is a frame DMB sent to a client.
type frame struct {
	Event   string          `json:"event"`
	CID     string          `json:"cid"`
	Service string          `json:"service"`
	Data    json.RawMessage `json:"data"`
	ID      json.RawMessage `json:"id"`
	ReplyTo json.RawMessage `json:"reply_to"`
	Error   string          `json:"error"`
	Room    string          `json:"room"`
	More    bool            `json:"more"`
	// 1.1, section 11
	Session   string `json:"session"`
	Resumed   bool   `json:"resumed"`
	Recovered bool   `json:"recovered"`
	Offset    string `json:"offset"`
}

// wsClient is a client of a service that reads every frame into a
// channel. It is a WebSocket client, or, while currentTransport says so
// (transports_test.go), a TCP client or a client of the HTTP fallback:
// the same frames, sent and read alike, and closed() says what DMB closed
// it with on each.
type wsClient struct {
	t    testing.TB
	node *testNode // the node it connected to, when known
	// conn is a *websocket.Conn, or the connection of another transport,
	// which can do what a WebSocket and it have in common.
	conn clientConn
	cid  string
	// session is the newest session token the client got; next passes
	// over dmb:session, which only renews it.
	session string
	frames  chan frame
	mu      sync.Mutex
	err     error // what ended the reads: a websocket.CloseError when DMB closed it
	ended   chan struct{}
}

// clientConn is what a test may do with a client's connection itself.
// *websocket.Conn has it; on the other transports, CloseNow drops the
// connection and Write of a text message sends a frame, and what only a
// WebSocket has (a close code of the client's, binary messages) fails.
type clientConn interface {
	Write(ctx context.Context, typ websocket.MessageType, p []byte) error
	Close(code websocket.StatusCode, reason string) error
	CloseNow() error
}

// dialRaw opens a WebSocket without reading from it.
func dialRaw(t testing.TB, url string, header http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(1 << 24)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// connect dials a service on a node and reads frames in the background.
func connect(t testing.TB, n *testNode, service string) *wsClient {
	t.Helper()
	c := connectURL(t, n.wsURL(service), nil)
	c.node = n
	return c
}

// connectURL connects to the service of a WebSocket URL (its query
// holding token, resume and offset) over currentTransport, and reads
// frames in the background.
func connectURL(t testing.TB, url string, header http.Header) *wsClient {
	t.Helper()
	if tr := currentTransport; tr != nil {
		return tr.connect(t, url, header)
	}
	conn := dialRaw(t, url, header)
	return newClient(t, conn, false, func() ([]byte, error) {
		_, data, err := conn.Read(context.Background())
		return data, err
	})
}

// newClient reads frames with read in the background until it fails. On
// a transport whose last frame is dmb:close (lastIsClose), that frame is
// DMB's close, as a WebSocket's close frame is: the reads end with its
// code and reason.
func newClient(t testing.TB, conn clientConn, lastIsClose bool, read func() ([]byte, error)) *wsClient {
	c := &wsClient{t: t, conn: conn, frames: make(chan frame, 20000), ended: make(chan struct{})}
	go c.read(read, lastIsClose)
	return c
}

func (c *wsClient) read(next func() ([]byte, error), lastIsClose bool) {
	defer close(c.ended)
	var closeErr error // dmb:close, once read
	for {
		data, err := next()
		if err != nil {
			if closeErr != nil {
				err = closeErr
			}
			c.fail(err)
			return
		}
		var f struct {
			frame
			Code   websocket.StatusCode `json:"code"`
			Reason string               `json:"reason"`
		}
		switch {
		case json.Unmarshal(data, &f) != nil:
			c.fail(fmt.Errorf("frame is not JSON: %q", data))
			return
		case closeErr != nil:
			c.fail(fmt.Errorf("frame %s after dmb:close", data))
			return
		case lastIsClose && f.Event == "dmb:close":
			closeErr = websocket.CloseError{Code: f.Code, Reason: f.Reason}
		default:
			c.frames <- f.frame
		}
	}
}

func (c *wsClient) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// welcome reads dmb:connected and records the cid.
func (c *wsClient) welcome() *wsClient {
	c.t.Helper()
	f := c.next()
	if f.Event != "dmb:connected" || f.CID == "" {
		c.t.Fatalf("first frame = %+v, want dmb:connected with a cid", f)
	}
	c.cid = f.CID
	return c
}

// next returns the next frame, passing over dmb:session (the client
// keeps its token in session).
func (c *wsClient) next() frame {
	c.t.Helper()
	for {
		f := c.nextFrame()
		if f.Session != "" {
			c.session = f.Session
		}
		if f.Event != "dmb:session" {
			return f
		}
	}
}

func (c *wsClient) nextFrame() frame {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-c.ended:
		select {
		case f := <-c.frames:
			return f
		default:
		}
		c.t.Fatalf("connection ended: %v", c.endErr())
	case <-time.After(wait):
		c.t.Fatalf("timed out waiting for a frame")
	}
	return frame{}
}

// nextEvent returns the next frame of the given event, discarding others.
func (c *wsClient) nextEvent(event string) frame {
	c.t.Helper()
	for {
		if f := c.next(); f.Event == event {
			return f
		}
	}
}

func (c *wsClient) endErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// closed waits until the connection ends and returns the close code and
// reason DMB sent.
func (c *wsClient) closed() (websocket.StatusCode, string) {
	c.t.Helper()
	select {
	case <-c.ended:
	case <-time.After(wait):
		c.t.Fatalf("connection not closed")
	}
	var ce websocket.CloseError
	if errors.As(c.endErr(), &ce) {
		return ce.Code, ce.Reason
	}
	return websocket.CloseStatus(c.endErr()), ""
}

func (c *wsClient) send(v string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(v)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// refused connects and returns the close code DMB answers with.
func refused(t testing.TB, url string, header http.Header) (websocket.StatusCode, string) {
	t.Helper()
	return connectURL(t, url, header).closed()
}

type backendEvent = backend.Event

// outcome connects and returns 0 when the node accepted the client (which it
// then closes), else the close code it was refused with.
func outcome(t testing.TB, url string) websocket.StatusCode {
	t.Helper()
	c := connectURL(t, url, nil)
	defer c.conn.CloseNow()
	select {
	case f := <-c.frames:
		if f.Event == "dmb:connected" {
			return 0
		}
		t.Fatalf("first frame %+v", f)
	case <-c.ended:
	case <-time.After(wait):
		t.Fatalf("no answer from %s", url)
	}
	code, _ := c.closed()
	return code
}
