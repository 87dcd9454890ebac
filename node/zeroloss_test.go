package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
)

// A node leaves, drained or killed, while its clients receive a steady
// stream of recoverable broadcasts: behind one address, every client
// resumes on the other node and ends with every message exactly once, in
// order, and the backend sees no client leave for good
// (docs/protocol.md, section 11).

// frontProxy is one address in front of several nodes, as a TCP load
// balancer is: each connection goes to the next node that answers.
type frontProxy struct {
	ln    net.Listener
	addrs []string
	next  atomic.Uint32
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, addrs ...string) *frontProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &frontProxy{ln: ln, addrs: addrs, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *frontProxy) url(service string) string {
	return "ws://" + p.ln.Addr().String() + "/ws/" + service
}

func (p *frontProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.relay(c) })
	}
}

// track adds c to the connections closed at the end, false when the
// proxy is closing.
func (p *frontProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.mu.Unlock()
}

func (p *frontProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *frontProxy) relay(c net.Conn) {
	p.track(c)
	defer p.untrack(c)
	start := int(p.next.Add(1))
	var up net.Conn
	for i := range p.addrs {
		var err error
		if up, err = net.DialTimeout("tcp", p.addrs[(start+i)%len(p.addrs)], time.Second); err == nil {
			break
		}
	}
	if up == nil {
		return
	}
	p.track(up)
	defer p.untrack(up)
	done := make(chan struct{})
	p.wg.Go(func() {
		_, _ = io.Copy(up, c)
		_ = up.Close()
		close(done)
	})
	_, _ = io.Copy(c, up)
	_ = c.Close()
	<-done
}

// streamClient is a client that reads numbered broadcasts and resumes
// whenever its connection ends, as the browser client does.
type streamClient struct {
	url     string
	want    int
	cid     string
	session string
	offsets map[string]string
	seqs    []int
	resumes int
	gaps    int // resumes that said recovered: false
	err     error
	done    chan struct{} // closed when it has want messages, or failed
}

func (c *streamClient) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

func (c *streamClient) run(ctx context.Context) {
	defer func() {
		if c.err != nil || len(c.seqs) < c.want {
			select {
			case <-c.done:
			default:
				close(c.done)
			}
		}
	}()
	for ctx.Err() == nil && c.err == nil {
		u := c.url
		if c.session != "" {
			q := url.Values{"resume": {c.session}}
			var offs []string
			for _, o := range c.offsets {
				offs = append(offs, o)
			}
			q.Set("offset", strings.Join(offs, ","))
			u += "?" + q.Encode()
		}
		conn, _, err := websocket.Dial(ctx, u, nil)
		if err != nil {
			select { // the nodes are between states: try again shortly
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		c.read(ctx, conn)
		_ = conn.CloseNow()
	}
}

// read reads one connection's frames until it ends.
func (c *streamClient) read(ctx context.Context, conn *websocket.Conn) {
	first := true
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) == 4010 {
				c.fail(errors.New("closed with 4010: another connection took its session"))
			}
			return
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			c.fail(fmt.Errorf("frame %q: %w", data, err))
			return
		}
		if f.Session != "" {
			c.session = f.Session
		}
		switch {
		case first:
			first = false
			switch {
			case f.Event != "dmb:connected":
				c.fail(fmt.Errorf("first frame %s", data))
			case c.cid == "":
				c.cid = f.CID
			case !f.Resumed || f.CID != c.cid:
				c.fail(fmt.Errorf("reconnected without its session: %s", data))
			default:
				c.resumes++
				if !f.Recovered {
					c.gaps++
				}
			}
		case f.Event == "dmb:broadcast":
			var m struct{ Seq int }
			_ = json.Unmarshal(f.Data, &m)
			c.seqs = append(c.seqs, m.Seq)
			stream, _, _ := strings.Cut(f.Offset, ":")
			c.offsets[stream] = f.Offset
			if len(c.seqs) == c.want {
				close(c.done)
			}
		}
		if c.err != nil {
			return
		}
	}
}

// zeroLoss runs clients through a proxy in front of two nodes, has leave
// make one of them go while a backend publishes, and checks what each
// client and the backend saw.
func zeroLoss(t *testing.T, e *env, front *frontProxy, bkid string, be *testBackend, leave func()) {
	const clients, total, leaveAt = 1000, 150, 50
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := make([]*streamClient, clients)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range cs {
		c := &streamClient{url: front.url("zl"), want: total, offsets: map[string]string{}, done: make(chan struct{})}
		cs[i] = c
		wg.Go(func() { c.run(ctx) })
	}
	eventually(t, "every client connected", func() bool {
		return be.connectedCount() >= clients
	})
	tick := time.NewTicker(20 * time.Millisecond) // 50 a second
	defer tick.Stop()
	for seq := 1; seq <= total; seq++ {
		<-tick.C
		e.publishRecoverably(ctx, bkid, fmt.Sprintf(`{"type":"broadcast","data":{"seq":%d}}`, seq))
		if seq == leaveAt {
			leave()
		}
	}
	resumed := 0
	for i, c := range cs {
		select {
		case <-c.done:
		case <-ctx.Done():
			t.Fatalf("client %d: not every message by the deadline", i)
		}
	}
	// What the backend heard while the clients were there: their own end
	// comes after.
	be.caughtUp()
	events := be.held
	cancel()
	wg.Wait()
	for i, c := range cs {
		if c.err != nil {
			t.Fatalf("client %d: %v", i, c.err)
		}
		for j, s := range c.seqs {
			if s != j+1 {
				t.Fatalf("client %d: message %d is %d: lost, twice or out of order (%v...)", i, j+1, s, c.seqs[max(0, j-3):min(len(c.seqs), j+3)])
			}
		}
		if c.gaps > 0 {
			t.Errorf("client %d: %d resumes said recovered false", i, c.gaps)
		}
		resumed += min(c.resumes, 1)
	}
	if resumed < clients/4 {
		t.Fatalf("only %d clients resumed: the node that left held few", resumed)
	}
	// The backend: every end it heard of was resumable, and each was
	// followed by the resume.
	gone := map[string]bool{}
	for _, ev := range events {
		switch {
		case ev.Type == "client_disconnected" && !ev.Resumable:
			t.Fatalf("the backend was told %+v: a final disconnect", ev)
		case ev.Type == "client_disconnected":
			gone[ev.CID] = true
		case ev.Type == "client_connected" && ev.Resumed:
			delete(gone, ev.CID)
		}
	}
	if len(gone) > 0 && e.topo.sharded {
		// On a cluster the old node's client_disconnected and its client
		// table are on different shards: the resume may see the line gone
		// before the event is published (docs/protocol.md, section 11).
		t.Logf("%d clients' ends reached the backend after their resumes (cluster)", len(gone))
		gone = nil
	}
	if len(gone) > 0 {
		for cid := range gone {
			for _, ev := range events {
				if ev.CID == cid {
					t.Logf("%s: %s code %d %q resumed %v resumable %v node %s", cid, ev.Type, ev.Code, ev.Reason, ev.Resumed, ev.Resumable, ev.Node)
				}
			}
			break
		}
		t.Fatalf("%d clients left and were not resumed, by the backend's account", len(gone))
	}
	t.Logf("%d clients, %d messages each, exactly once and in order; %d resumed", clients, total, resumed)
}

// connectedCount counts the client_connected events so far, keeping them.
func (b *testBackend) connectedCount() int {
read:
	for {
		select {
		case ev := <-b.events:
			b.held = append(b.held, ev)
		default:
			break read
		}
	}
	n := 0
	for _, ev := range b.held {
		if ev.Type == "client_connected" {
			n++
		}
	}
	return n
}

func bigQueues(c *config.Config) {
	c.ClientRate = 0
	c.MaxClients = 0
}

func TestADrainedNodesClientsResumeElsewhereWithNothingLost(t *testing.T) {
	e := newEnv(t)
	a, b := e.startNode(bigQueues), e.startNode(bigQueues)
	be := e.startBackend("zl")
	front := startProxy(t, a.Addr().String(), b.Addr().String())
	zeroLoss(t, e, front, be.BKID(), be, func() {
		if code, _ := a.admin("POST", "/drain", "{}"); code != 202 {
			t.Errorf("POST /drain: %d", code)
		}
	})
}

func TestAKilledNodesClientsResumeElsewhereWithNothingLost(t *testing.T) {
	e := newEnv(t)
	a := e.startNodeProcess(bigQueues)
	b := e.startNode(bigQueues)
	be := e.startBackend("zl")
	front := startProxy(t, a.addr, b.Addr().String())
	zeroLoss(t, e, front, be.BKID(), be, a.kill)
}
