package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"
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
	resp.Body = upgradedConn{Conn: conn, r: br}
	return resp, nil
}

// upgradedConn is a connection whose first bytes wait in r.
type upgradedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c upgradedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
