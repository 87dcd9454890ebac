package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/config"
)

// The HTTP fallback (docs/protocol.md, section 12): an event stream down,
// POSTs up, the same frames and rules as on a WebSocket.

// sseClient reads an event stream's frames into a channel.
type sseClient struct {
	t      *testing.T
	base   string // http://host:port
	post   string // the path to POST frames to
	resp   *http.Response
	frames chan frame
	raw    chan string // the frames' JSON, in order
	ended  chan struct{}
	cancel context.CancelFunc
}

func openSSE(t *testing.T, n *testNode, service, query string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	u := n.url("/sse/" + service)
	if query != "" {
		u += "?" + query
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open %s: %v", u, err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		t.Fatalf("open %s: %d %s", u, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	c := &sseClient{t: t, base: n.url(""), resp: resp, frames: make(chan frame, 10000), raw: make(chan string, 10000), ended: make(chan struct{}), cancel: cancel}
	posted := make(chan string, 1)
	go func() {
		defer close(c.ended)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<16), 1<<24)
		name := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data := strings.TrimPrefix(line, "data: ")
				if name == "post" {
					posted <- data
				} else {
					var f frame
					_ = json.Unmarshal([]byte(data), &f)
					c.frames <- f
					c.raw <- data
				}
				name = ""
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-c.ended })
	select {
	case c.post = <-posted:
	case <-c.ended:
	case <-time.After(wait):
		t.Fatal("no post event")
	}
	return c
}

func (c *sseClient) next() frame {
	c.t.Helper()
	for {
		select {
		case f := <-c.frames:
			<-c.raw
			if f.Event != "dmb:session" {
				return f
			}
		case <-c.ended:
			c.t.Fatal("the stream ended")
		case <-time.After(wait):
			c.t.Fatal("timed out waiting for an event")
		}
	}
}

// send POSTs frames, one per line.
func (c *sseClient) send(frames ...string) int {
	c.t.Helper()
	resp, err := http.Post(c.base+c.post, "application/json", strings.NewReader(strings.Join(frames, "\n")))
	if err != nil {
		c.t.Fatalf("post: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// closeFrame is dmb:close's code and reason.
type closeFrame struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

func (c *sseClient) closedWith() closeFrame {
	c.t.Helper()
	var last string
	for {
		select {
		case s := <-c.raw:
			last = s
			<-c.frames
		case <-c.ended:
			select {
			case s := <-c.raw:
				last = s
				continue
			default:
			}
			var cf struct {
				Event string `json:"event"`
				closeFrame
			}
			if err := json.Unmarshal([]byte(last), &cf); err != nil || cf.Event != "dmb:close" {
				c.t.Fatalf("the stream ended with %s, want dmb:close", last)
			}
			return cf.closeFrame
		case <-time.After(wait):
			c.t.Fatal("the stream did not end")
		}
	}
}

func TestTheHTTPFallbackCarriesTheSameFrames(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	be := e.startBackend("chat")
	c := openSSE(t, n, "chat", "")
	f := c.next()
	if f.Event != "dmb:connected" || f.CID == "" || f.Session == "" {
		t.Fatalf("first frame %+v", f)
	}
	cid := f.CID
	be.next(ofTypeCID("client_connected", cid))
	if code := c.send(`{"event":"dmb:message","data":1,"id":1}`, `{"event":"dmb:message","data":2,"id":2}`, `not json`); code != http.StatusNoContent {
		t.Fatalf("POST: %d", code)
	}
	// The error is answered at once, the acks once the backend has the
	// messages.
	answers := map[string]int{}
	for range 3 {
		answers[c.next().Event]++
	}
	if answers["dmb:ack"] != 2 || answers["dmb:error"] != 1 {
		t.Fatalf("answers %v, want two acks and an error", answers)
	}
	for _, want := range []string{"1", "2"} {
		if ev := be.next(ofTypeCID("message", cid)); string(ev.Data) != want {
			t.Fatalf("backend got %s, want %s in order", ev.Data, want)
		}
	}
	e.publishRecoverably(e.ctx(), be.BKID(), `{"type":"broadcast","data":"all"}`)
	all := c.next()
	if all.Event != "dmb:broadcast" || all.Offset == "" {
		t.Fatalf("got %+v, want the broadcast with its offset", all)
	}
	// A POST to a stream that is not there, or a key guessed.
	resp, err := http.Post(n.url("/sse/chat/not-a-key"), "application/json", strings.NewReader(`{"event":"dmb:message","data":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("POST to an unknown stream: %d, want 404", resp.StatusCode)
	}

	// Resume over the fallback: the client went away, and comes back.
	c.cancel()
	gone := be.next(ofTypeCID("client_disconnected", cid))
	if !gone.Resumable {
		t.Fatalf("client_disconnected %+v, want resumable", gone)
	}
	e.publishRecoverably(e.ctx(), be.BKID(), `{"type":"broadcast","data":"missed"}`)
	r := openSSE(t, n, "chat", url.Values{"resume": {f.Session}, "offset": {all.Offset}}.Encode())
	if got := r.next(); got.CID != cid || !got.Resumed {
		t.Fatalf("resume: %+v", got)
	}
	if got := r.next(); string(got.Data) != `"missed"` {
		t.Fatalf("got %+v, want what it missed", got)
	}
}

func TestTheHTTPFallbackEndsWithDMBClose(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.MaxMessageBytes = 128 })
	e.startBackend("chat")
	if cf := openSSE(t, n, "nobody", "").closedWith(); cf.Code != 4004 {
		t.Fatalf("unknown service: %+v, want 4004", cf)
	}
	big := openSSE(t, n, "chat", "")
	big.next()
	big.send(`{"event":"dmb:message","data":"` + strings.Repeat("x", 200) + `"}`)
	if cf := big.closedWith(); cf.Code != 1009 {
		t.Fatalf("a frame over the limit: %+v, want 1009", cf)
	}
	last := openSSE(t, n, "chat", "")
	last.next()
	done := make(chan error, 1)
	go func() { done <- n.stop() }()
	if cf := last.closedWith(); cf.Code != 1001 {
		t.Fatalf("shutdown: %+v, want 1001", cf)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown with a stream open: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("the node did not stop with a stream open")
	}
}

// A client of the fallback that reads nothing is a slow consumer like any
// other: closed with 4008 once its queue is over its bytes, and the
// others go on.
func TestAFallbackClientThatDoesNotReadIsASlowConsumer(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(func(c *config.Config) { c.SendQueueBytes, c.MaxBackendBytes = 256<<10, 128<<10 })
	be := e.startBackend("chat")
	conn, err := net.Dial("tcp", n.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A small receive buffer, so that the socket fills soon.
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := conn.Write([]byte("GET /sse/chat HTTP/1.1\r\nHost: dmb\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	slow := be.next(ofType("client_connected")).CID
	other := connect(t, n, "chat").welcome()
	big := strings.Repeat("x", 60<<10)
	for i := 0; ; i++ {
		if err := be.Broadcast(e.ctx(), big); err != nil {
			t.Fatal(err)
		}
		if f := other.nextEvent("dmb:broadcast"); len(f.Data) < len(big) {
			t.Fatalf("the reading client got %d bytes", len(f.Data))
		}
		select {
		case ev := <-be.events:
			be.held = append(be.held, ev)
		default:
		}
		if slices.ContainsFunc(be.held, ofTypeCID("client_disconnected", slow)) || i > 1000 {
			break
		}
	}
	if ev := be.next(ofTypeCID("client_disconnected", slow)); ev.Code != 4008 {
		t.Fatalf("client_disconnected %+v, want 4008", ev)
	}
}
