package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// wsClient returns the client of the WebSocket handshakes made from src:
// its transport dials from src to loopback only, like httpClient's, but
// makes each handshake on the caller's goroutine. An http.Transport starts
// two goroutines per connection and pools it, work that counts against the
// connect rate, since the generator shares the machine with DMB.
func wsClient(src netip.Addr) *http.Client {
	return &http.Client{
		Transport:     upgradeTransport{dial: dialer(src).DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// upgradeTransport dials, writes the request and reads the response. The
// connection becomes the response's body, which is what coder/websocket
// takes over after a 101.
type upgradeTransport struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (t upgradeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	addr := req.URL.Host
	if req.URL.Port() == "" {
		addr = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	conn, err := t.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	resp, err := t.exchange(conn, req)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	if to, ok := ctx.Value(connSlot{}).(**upgradedConn); ok {
		*to = resp.Body.(*upgradedConn)
	}
	return resp, nil
}

func (t upgradeTransport) exchange(conn net.Conn, req *http.Request) (*http.Response, error) {
	bw := bufio.NewWriterSize(conn, 512)
	if err := req.Write(bw); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 512)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	// The frames that came with the response are in br.
	resp.Body = &upgradedConn{Conn: conn, r: br}
	return resp, nil
}

// connSlot is the request context key under which a dial asks the
// transport for the connection it makes: coder/websocket keeps it to itself.
type connSlot struct{}

// upgradedConn is a connection whose first bytes wait in r. The client
// writes its frames with writeFrame; between cork and uncork they are held
// and go in one write, as a browser sends the frames queued on a WebSocket
// together.
type upgradedConn struct {
	net.Conn
	r *bufio.Reader

	mu        sync.Mutex // orders writes: the reader's pongs and closes too
	corked    bool
	held      []byte
	closeSent bool // a close frame was written or held: no frame may follow
}

func (c *upgradedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// cork holds the frames that follow until uncork.
func (c *upgradedConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was held, in one write.
func (c *upgradedConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

// writeFrame writes payload as one frame of opcode op, masked as a client
// sends it, or holds it while the connection is corked. After a close frame
// it writes nothing: none may follow one.
func (c *upgradedConn) writeFrame(op byte, payload []byte) error {
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return nil
	}
	c.closeSent = op == wsframe.OpClose
	start := len(c.held)
	c.held = wsframe.AppendMasked(c.held, op, payload, key)
	if c.corked {
		return nil
	}
	_, err := c.Conn.Write(c.held[start:])
	c.held = c.held[:start]
	return err
}
