package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/redistest"
)

// The contract over each transport (docs/protocol.md, section 12): the
// same frames over a WebSocket, a TCP connection and the HTTP fallback, so
// the same tests hold over each.

// transport is a way for clients to reach a node.
type transport struct {
	name string
	// configure turns the transport on in a node's configuration.
	configure func(t testing.TB, cfg *config.Config)
	// connect opens a client of the service that a WebSocket URL names,
	// with the URL's token, resume and offset, and reads it in the
	// background.
	connect func(t testing.TB, url string, header http.Header) *wsClient
}

// currentTransport, when set, is the transport of the clients that the
// harness opens (connect, connectURL, refused, outcome); nil is the
// WebSocket. The contract's runs over the other transports set it for
// their subtests, which run one at a time.
var currentTransport *transport

var (
	tcpTransport = &transport{
		name: "tcp",
		configure: func(t testing.TB, cfg *config.Config) {
			cfg.TCPPort = redistest.FreePort(t)
		},
		connect: connectTCP,
	}
	fallbackTransport = &transport{
		name:      "http fallback",
		configure: func(testing.TB, *config.Config) {},
		connect:   connectFallback,
	}
)

// webSocketOnly are the contract's tests that need a WebSocket, with why:
// the runs over the other transports pass them over.
var webSocketOnly = map[string]string{
	// The client closes with a code and reason of its own (1001 going
	// away), which the backend is told: the other transports have no
	// close from the client, only the connection's end (1006).
	"BackendHearsClientConnectedAndDisconnected": "the client's own close code and reason",
	// Its clients are WebSocket clients of their own, through a proxy in
	// front of the nodes' HTTP port, not the harness's.
	"ADrainedNodesClientsResumeElsewhereWithNothingLost": "its own WebSocket clients behind a proxy",
}

// runContractOver runs the contract suite on a single Redis with clients
// over tr, one test at a time.
func runContractOver(t *testing.T, tr *transport) {
	known := map[string]bool{}
	for _, tc := range contract {
		known[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			if why := webSocketOnly[tc.name]; why != "" {
				t.Skip("WebSocket-only: " + why)
			}
			currentTransport = tr
			defer func() { currentTransport = nil }()
			tc.test(t)
		})
	}
	for name := range webSocketOnly {
		if !known[name] {
			t.Errorf("webSocketOnly names %s, which is not in the contract", name)
		}
	}
}

func TestContractOverTCP(t *testing.T) { runContractOver(t, tcpTransport) }

func TestContractOverTheHTTPFallback(t *testing.T) { runContractOver(t, fallbackTransport) }

// clientURL splits a client's WebSocket URL into the node's address, the
// service and the query.
func clientURL(t testing.TB, raw string) (u *neturl.URL, service string, q neturl.Values) {
	t.Helper()
	u, err := neturl.Parse(raw)
	if err != nil {
		t.Fatalf("client URL %s: %v", raw, err)
	}
	service, ok := strings.CutPrefix(u.Path, "/ws/")
	if !ok {
		t.Fatalf("client URL %s is not a WebSocket URL of a service", raw)
	}
	return u, service, u.Query()
}

// tcpAddrs maps a node's HTTP address to the address of its TCP clients,
// for a TCP client given the node's WebSocket URL.
var tcpAddrs sync.Map

// registerTCP records a node's TCP address until the test ends.
func registerTCP(t testing.TB, httpAddr, tcpAddr string) {
	if tcpAddr == "" {
		return
	}
	tcpAddrs.Store(httpAddr, tcpAddr)
	t.Cleanup(func() { tcpAddrs.CompareAndDelete(httpAddr, tcpAddr) })
}

// connectTCP connects over TCP: the hello line carries what the URL's
// path and query do.
func connectTCP(t testing.TB, url string, header http.Header) *wsClient {
	t.Helper()
	u, service, q := clientURL(t, url)
	if len(header) > 0 {
		t.Fatalf("a TCP client has no HTTP header (%v)", header)
	}
	addr, ok := tcpAddrs.Load(u.Host)
	if !ok {
		t.Fatalf("the node at %s has no TCP port", u.Host)
	}
	conn, err := net.DialTimeout("tcp", addr.(string), wait)
	if err != nil {
		t.Fatalf("dial tcp %s: %v", addr, err)
	}
	hello, err := json.Marshal(struct {
		Event   string `json:"event"`
		Service string `json:"service"`
		Token   string `json:"token,omitempty"`
		Resume  string `json:"resume,omitempty"`
		Offset  string `json:"offset,omitempty"`
	}{"dmb:hello", service, q.Get("token"), q.Get("resume"), q.Get("offset")})
	if err != nil {
		t.Fatal(err)
	}
	tc := &tcpConn{t: t, conn: conn}
	r := bufio.NewReader(conn)
	c := newClient(t, tc, true, func() ([]byte, error) {
		line, err := r.ReadBytes('\n')
		if err != nil {
			// As a client does once DMB is done with it: it leaves.
			_ = conn.Close()
			return nil, err
		}
		return bytes.TrimSuffix(line, []byte("\n")), nil
	})
	t.Cleanup(func() {
		_ = conn.Close()
		<-c.ended
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tc.Write(ctx, websocket.MessageText, hello); err != nil {
		t.Fatalf("write the hello: %v", err)
	}
	return c
}

// tcpConn is a TCP client's connection: a frame is a line.
type tcpConn struct {
	t    testing.TB
	conn net.Conn
}

func (c *tcpConn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if typ != websocket.MessageText {
		return errors.New("a TCP connection carries lines of text only")
	}
	deadline, _ := ctx.Deadline()
	_ = c.conn.SetWriteDeadline(deadline)
	_, err := c.conn.Write(append(bytes.Clone(p), '\n'))
	return err
}

func (c *tcpConn) Close(websocket.StatusCode, string) error {
	c.t.Helper()
	c.t.Fatal("a TCP client has no close code of its own: the test is WebSocket-only")
	return nil
}

// CloseNow ends the connection: the node sees it end (1006).
func (c *tcpConn) CloseNow() error { return c.conn.Close() }

// connectFallback opens the HTTP fallback's event stream, GET
// /sse/{service} with the URL's query and header.
func connectFallback(t testing.TB, url string, header http.Header) *wsClient {
	t.Helper()
	u, service, _ := clientURL(t, url)
	u.Scheme = strings.Replace(u.Scheme, "ws", "http", 1)
	u.Path, u.RawPath = "/sse/"+service, ""
	ctx, cancel := context.WithCancel(context.Background())
	// Its own connections, closed with it.
	hc := &http.Client{Transport: &http.Transport{}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if header != nil {
		req.Header = header.Clone()
	}
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open %s: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		resp.Body.Close()
		t.Fatalf("open %s: %s, %s", u, resp.Status, resp.Header.Get("Content-Type"))
	}
	fc := &fallbackConn{t: t, hc: hc, base: u.Scheme + "://" + u.Host, cancel: cancel, posted: make(chan struct{})}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<24)
	c := newClient(t, fc, true, func() ([]byte, error) {
		name := ""
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "event: "); ok {
				name = v
				continue
			}
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok {
				continue
			}
			if name != "post" {
				return []byte(data), nil
			}
			if fc.post != "" {
				return nil, fmt.Errorf("a second post event: %s", data)
			}
			fc.post = data
			close(fc.posted)
			name = ""
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
		return nil, io.EOF
	})
	fc.ended = c.ended
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-c.ended
		hc.CloseIdleConnections()
	})
	return c
}

// fallbackConn is the HTTP fallback's connection: frames come on the
// event stream and go in POSTs to the path of its first event, post.
type fallbackConn struct {
	t      testing.TB
	hc     *http.Client
	base   string // scheme://host:port
	cancel context.CancelFunc
	post   string        // set before posted is closed
	posted chan struct{} // closed when the post event came
	ended  <-chan struct{}
}

// Write POSTs a frame; DMB has handled it when the POST is answered.
func (c *fallbackConn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if typ != websocket.MessageText {
		return errors.New("the HTTP fallback carries JSON text only")
	}
	select {
	case <-c.posted:
	case <-c.ended:
		return errors.New("the stream ended before its post event")
	case <-ctx.Done():
		return ctx.Err()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+c.post, bytes.NewReader(p))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("POST %s: %s", c.post, resp.Status)
	}
	return nil
}

func (c *fallbackConn) Close(websocket.StatusCode, string) error {
	c.t.Helper()
	c.t.Fatal("a client of the HTTP fallback has no close code of its own: the test is WebSocket-only")
	return nil
}

// CloseNow drops the stream: the node sees it end (1006).
func (c *fallbackConn) CloseNow() error {
	c.cancel()
	return nil
}
