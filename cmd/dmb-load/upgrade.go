package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// The clients make the opening handshake (RFC 6455, section 4) themselves,
// without net/http and coder/websocket: building and parsing their requests
// and responses, the connection state they keep and the garbage they leave
// were about a third of the tool's CPU while clients connect, and the tool
// shares the machine with the node whose connect rate it measures. The
// request has the headers RFC 6455 asks of a client, and the node serves it
// with coder/websocket as it serves a browser's.

// endpoint is where the clients connect: a WebSocket URL, a TCP
// address where the clients speak one JSON frame per line, or the URL of
// the HTTP fallback's event stream.
type endpoint struct {
	url  string // the URL it was made of; tcp://host:port for TCP
	addr string // host:port to dial
	head string // WebSocket: the request up to the key; SSE: the whole request

	// SSE (docs/protocol.md, section 12): the origin the POSTs go to,
	// http://host:port, and the client that sends them.
	sse    bool
	origin string
	post   *http.Client

	// TCP (docs/protocol.md, section 12): the service, and the hello
	// line that opens a connection, with its ending.
	tcp     bool
	service string
	hello   []byte
}

// newTCPEndpoint is the endpoint of TCP clients of service at addr; q
// holds the hello's token, resume and offset, any of them.
func newTCPEndpoint(addr, service string, q url.Values) (*endpoint, error) {
	hello := struct {
		Event   string `json:"event"`
		Service string `json:"service"`
		Token   string `json:"token,omitempty"`
		Resume  string `json:"resume,omitempty"`
		Offset  string `json:"offset,omitempty"`
	}{"dmb:hello", service, q.Get("token"), q.Get("resume"), q.Get("offset")}
	line, err := json.Marshal(hello)
	if err != nil {
		return nil, err
	}
	return &endpoint{url: "tcp://" + addr, addr: addr, tcp: true, service: service, hello: append(line, '\n')}, nil
}

func newEndpoint(rawURL string) (*endpoint, error) {
	return newHTTPEndpoint(rawURL, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ")
}

// newSSEEndpoint is the endpoint of an event stream, GET rawURL (an http
// URL); post sends the clients' frames.
func newSSEEndpoint(rawURL string, post *http.Client) (*endpoint, error) {
	e, err := newHTTPEndpoint(rawURL, "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
	if err != nil {
		return nil, err
	}
	e.sse, e.origin, e.post = true, "http://"+urlHostPort(rawURL), post
	return e, nil
}

// newHTTPEndpoint is an endpoint whose request is GET rawURL, its head
// ending with rest after the Host header.
func newHTTPEndpoint(rawURL, rest string) (*endpoint, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("client URL: %w", err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &endpoint{url: rawURL, addr: addr, head: "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + rest}, nil
}

// urlHostPort is the host and port of a URL that parsed.
func urlHostPort(raw string) string {
	u, _ := url.Parse(raw)
	return u.Host
}

// withQuery is the endpoint with the query q (encoded, without "?").
func (e *endpoint) withQuery(q string) (*endpoint, error) {
	if e.tcp {
		v, err := url.ParseQuery(q)
		if err != nil {
			return nil, err
		}
		return newTCPEndpoint(e.addr, e.service, v)
	}
	if e.sse {
		return newSSEEndpoint(e.url+"?"+q, e.post)
	}
	return newEndpoint(e.url + "?" + q)
}

// maxAnswer bounds the server's answer to the opening handshake.
const maxAnswer = 4 << 10

// wsGUID is the GUID of RFC 6455, section 1.3.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// handshake sends the opening handshake on conn and reads the answer with
// in; the bytes that came behind it wait in in.
func (e *endpoint) handshake(conn net.Conn, in *inbox) error {
	if e.tcp {
		// The hello is answered with dmb:connected, or the last line,
		// dmb:close: the client's first frame either way.
		if _, err := conn.Write(e.hello); err != nil {
			return fmt.Errorf("hello: %w", err)
		}
		return nil
	}
	if e.sse {
		// The stream's first event says where to POST (nextLine), the
		// next is dmb:connected, or dmb:close.
		return in.conn.Conn.(*sseStream).open(e.head)
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	req := make([]byte, 0, len(e.head)+32)
	req = append(req, e.head...)
	req = base64.StdEncoding.AppendEncode(req, nonce[:])
	key := req[len(e.head):]
	sum := sha1.Sum(append(bytes.Clone(key), wsGUID...))
	accept := base64.StdEncoding.EncodeToString(sum[:])
	if _, err := conn.Write(append(req, "\r\n\r\n"...)); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	head, err := in.readHead()
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	return checkUpgrade(head, accept)
}

var crlf = []byte("\r\n")

// checkUpgrade checks the answer to an opening handshake that asked for
// no extension and no subprotocol (RFC 6455, section 4.1): head is its
// status line and header lines, each ending in CRLF.
func checkUpgrade(head []byte, accept string) error {
	line, rest, _ := bytes.Cut(head, crlf)
	status, ok := bytes.CutPrefix(line, []byte("HTTP/1.1 "))
	switch {
	case !ok:
		return fmt.Errorf("handshake: not an HTTP/1.1 answer: %.40q", line)
	case !bytes.Equal(status, []byte("101")) && !bytes.HasPrefix(status, []byte("101 ")):
		return fmt.Errorf("handshake: HTTP %.40q", status)
	}
	var upgrade, connection, accepted bool
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return fmt.Errorf("handshake: header line without a colon: %.40q", line)
		}
		value = bytes.Trim(value, " \t")
		switch {
		case bytes.EqualFold(name, []byte("Upgrade")):
			upgrade = bytes.EqualFold(value, []byte("websocket"))
		case bytes.EqualFold(name, []byte("Connection")):
			connection = hasToken(value, "upgrade")
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Accept")):
			accepted = string(value) == accept
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Extensions")), bytes.EqualFold(name, []byte("Sec-WebSocket-Protocol")):
			return fmt.Errorf("handshake: %s not asked for", name)
		}
	}
	switch {
	case !upgrade:
		return errors.New("handshake: no Upgrade: websocket")
	case !connection:
		return errors.New("handshake: no Connection: upgrade")
	case !accepted:
		return errors.New("handshake: Sec-WebSocket-Accept missing or wrong")
	}
	return nil
}

// hasToken tells whether a comma-separated header value holds token,
// in any case.
func hasToken(value []byte, token string) bool {
	for v := range bytes.SplitSeq(value, []byte(",")) {
		if bytes.EqualFold(bytes.Trim(v, " \t"), []byte(token)) {
			return true
		}
	}
	return false
}

// upgradedConn is a client's connection after the handshake. The client
// writes its frames with writeFrame; between cork and uncork they are held
// and go in one write, as a browser sends the frames queued on a WebSocket
// together.
//
// A TCP client's connection (lines) writes each frame as a line, and its
// close frame is the end of its writes: a TCP client has no close code of
// its own, and DMB ends the session when the client's side ends. An SSE
// client's (lines and events) is an sseStream: what it writes at once is
// one POST, a frame per line, and its close ends the stream.
type upgradedConn struct {
	net.Conn
	lines  bool // TCP and SSE: the client writes one frame per line
	events bool // SSE: DMB's frames come as events

	mu        sync.Mutex // orders writes: the reader's pongs and closes too
	corked    bool
	held      []byte
	closeSent bool // a close frame was written or held: no frame may follow
}

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

// errCloseSent refuses a frame after the close frame: none may follow it.
var errCloseSent = errors.New("close frame already sent")

// writeFrame writes payload as one frame of opcode op, masked as a client
// sends it, or holds it while the connection is corked. A close frame is
// not held: it goes at once, after what was, since the connection may be
// closed right after it.
func (c *upgradedConn) writeFrame(op byte, payload []byte) error {
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], mrand.Uint32())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return errCloseSent
	}
	if c.lines {
		return c.writeLineLocked(op, payload)
	}
	c.closeSent = op == wsframe.OpClose
	c.held = wsframe.AppendMasked(c.held, op, payload, key)
	if c.corked && !c.closeSent {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

// writeLineLocked is writeFrame on a TCP connection: a text frame is a
// line; a close sends what was held and ends the client's writes; there
// is no ping to answer with a pong. c.mu is held.
func (c *upgradedConn) writeLineLocked(op byte, payload []byte) error {
	switch op {
	case wsframe.OpText, wsframe.OpBinary:
		c.held = append(append(c.held, payload...), '\n')
		if c.corked {
			return nil
		}
	case wsframe.OpClose:
		c.closeSent = true
	default:
		return nil
	}
	var err error
	if len(c.held) > 0 {
		_, err = c.Conn.Write(c.held)
		c.held = c.held[:0]
	}
	if c.closeSent {
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = c.Conn.Close()
		}
	}
	return err
}

// mute makes writeFrame refuse every frame, as after a close: the reader
// then writes nothing (no pong, no echo of DMB's close). A flooder's
// connection is written by its one writer straight to the socket, in
// writes that may wait as long as DMB does not read; the reader must not
// wait behind them, nor put a frame between them.
func (c *upgradedConn) mute() {
	c.mu.Lock()
	c.closeSent = true
	c.mu.Unlock()
}
