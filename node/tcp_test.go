package node_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/internal/testcert"
)

// TCP clients, one JSON frame per line (docs/protocol.md, section 12).

// withTCP turns TCP clients on, on a free port.
func withTCP(t *testing.T) func(*config.Config) {
	port := redistest.FreePort(t)
	return func(c *config.Config) { c.TCPPort = port }
}

// tcpFrame is a line DMB sent: a frame, or the last line, dmb:close.
type tcpFrame struct {
	frame
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// tcpClient reads every line of a TCP connection into a channel.
type tcpClient struct {
	t       testing.TB
	conn    net.Conn
	cid     string
	session string
	frames  chan tcpFrame
	ended   chan struct{} // closed when the reads end
	err     error         // what ended them, once ended is closed
}

// dialTCP connects to the node's TCP port.
func dialTCP(t testing.TB, n *testNode) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", n.TCPAddr().String(), wait)
	if err != nil {
		t.Fatalf("dial tcp: %v", err)
	}
	return conn
}

// newTCPClient reads conn's lines in the background; the test's end
// closes it.
func newTCPClient(t testing.TB, conn net.Conn) *tcpClient {
	c := &tcpClient{t: t, conn: conn, frames: make(chan tcpFrame, 20000), ended: make(chan struct{})}
	go func() {
		defer close(c.ended)
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				// As a client does once DMB is done: it leaves.
				_ = conn.Close()
				c.err = err
				return
			}
			var f tcpFrame
			if err := json.Unmarshal(line, &f); err != nil {
				c.err = fmt.Errorf("line is not JSON: %q", line)
				return
			}
			c.frames <- f
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-c.ended
	})
	return c
}

// tcpConnect connects to service with a hello of extra members
// (`"token":"..."`, say) and reads in the background.
func tcpConnect(t testing.TB, n *testNode, service, extra string) *tcpClient {
	t.Helper()
	c := newTCPClient(t, dialTCP(t, n))
	c.hello(service, extra)
	return c
}

func (c *tcpClient) hello(service, extra string) {
	c.t.Helper()
	if extra != "" {
		extra = "," + extra
	}
	c.send(fmt.Sprintf(`{"event":"dmb:hello","service":%q%s}`, service, extra))
}

func (c *tcpClient) send(line string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c.conn, line+"\n"); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// welcome reads dmb:connected and records the cid and session token.
func (c *tcpClient) welcome() *tcpClient {
	c.t.Helper()
	f := c.next()
	if f.Event != "dmb:connected" || f.CID == "" {
		c.t.Fatalf("first line = %+v, want dmb:connected with a cid", f)
	}
	c.cid = f.CID
	return c
}

// next returns the next frame, passing over dmb:session (the client keeps
// its token).
func (c *tcpClient) next() tcpFrame {
	c.t.Helper()
	for {
		var f tcpFrame
		select {
		case f = <-c.frames:
		case <-c.ended:
			select {
			case f = <-c.frames:
			default:
				c.t.Fatalf("connection ended: %v", c.err)
			}
		case <-time.After(wait):
			c.t.Fatalf("timed out waiting for a line")
		}
		if f.Session != "" {
			c.session = f.Session
		}
		if f.Event != "dmb:session" {
			return f
		}
	}
}

// closed reads up to the last line, dmb:close, checks that the connection
// then ends, and returns the code and reason.
func (c *tcpClient) closed() (int, string) {
	c.t.Helper()
	for {
		if f := c.next(); f.Event == "dmb:close" {
			select {
			case <-c.ended:
			case <-time.After(wait):
				c.t.Fatalf("connection open after dmb:close")
			}
			if c.err != io.EOF {
				c.t.Fatalf("connection ended with %v after dmb:close, want EOF", c.err)
			}
			return f.Code, f.Reason
		}
	}
}

// tcpSetup starts a node with TCP clients on, a backend of chat, and a
// TCP client of chat that the backend saw connect from 127.0.0.1.
func tcpSetup(t *testing.T) (*testNode, *testBackend, *tcpClient) {
	t.Helper()
	e := newEnv(t)
	n := e.startNode(withTCP(t))
	b := e.startBackend("chat")
	c := tcpConnect(t, n, "chat", "").welcome()
	if ev := b.next(ofTypeCID("client_connected", c.cid)); ev.Remote != "127.0.0.1" {
		t.Fatalf("client_connected = %+v, want remote 127.0.0.1", ev)
	}
	return n, b, c
}

func TestTCPClientTalksToItsBackend(t *testing.T) {
	n, b, c := tcpSetup(t)

	c.send(`{"event":"dmb:message","data":{"text":"over tcp"},"id":7}`)
	if ev := b.next(ofTypeCID("message", c.cid)); string(ev.Data) != `{"text":"over tcp"}` {
		t.Fatalf("message = %+v", ev)
	}
	if f := c.next(); f.Event != "dmb:ack" || string(f.ID) != "7" {
		t.Fatalf("got %+v, want dmb:ack of 7", f)
	}

	// A line that is not JSON is answered, and the connection stays; so
	// are blank lines, which are passed over, and "\r\n" ends a line too.
	c.send("hello?")
	if f := c.next(); f.Event != "dmb:error" || f.Error != "invalid JSON" {
		t.Fatalf("got %+v, want dmb:error invalid JSON", f)
	}
	c.send("")
	c.send(`{"event":"dmb:message","data":"crlf","id":8}` + "\r")
	if ev := b.next(ofTypeCID("message", c.cid)); string(ev.Data) != `"crlf"` {
		t.Fatalf("message = %+v", ev)
	}
	if f := c.next(); f.Event != "dmb:ack" || string(f.ID) != "8" {
		t.Fatalf("got %+v, want dmb:ack of 8", f)
	}

	b.publish(t, `{"type":"broadcast","data":"to all"}`)
	if f := c.next(); f.Event != "dmb:broadcast" || string(f.Data) != `"to all"` {
		t.Fatalf("got %+v, want the broadcast", f)
	}
	b.publish(t, `{"type":"direct","cid":"`+c.cid+`","data":"to you","reply_to":7}`)
	if f := c.next(); f.Event != "dmb:direct" || string(f.Data) != `"to you"` || string(f.ReplyTo) != "7" {
		t.Fatalf("got %+v, want the direct", f)
	}

	// A WebSocket client of the service gets what the TCP one gets.
	ws := connect(t, n, "chat").welcome()
	b.next(ofTypeCID("client_connected", ws.cid))
	b.publish(t, `{"type":"broadcast","data":"both"}`)
	if f := c.next(); string(f.Data) != `"both"` {
		t.Fatalf("tcp got %+v", f)
	}
	if f := ws.next(); string(f.Data) != `"both"` {
		t.Fatalf("websocket got %+v", f)
	}

	_ = c.conn.Close()
	if ev := b.next(ofTypeCID("client_disconnected", c.cid)); ev.Code != 1006 {
		t.Fatalf("client_disconnected = %+v, want 1006", ev)
	}
}

func TestTCPClientsAreClosedWithALastLine(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withTCP(t), func(c *config.Config) {
		c.MaxMessageBytes = 1024
		c.HandshakeTimeout = 500 * time.Millisecond
	})
	b := e.startBackend("chat")
	cases := []struct {
		name  string
		hello string
		code  int
	}{
		{"not a hello", `{"event":"dmb:message","data":1}`, 1008},
		{"not JSON", `GET / HTTP/1.1`, 1008},
		{"no service", `{"event":"dmb:hello"}`, 1008},
		{"unknown service", `{"event":"dmb:hello","service":"nobody"}`, 4004},
		{"invalid service", `{"event":"dmb:hello","service":"no spaces"}`, 4004},
		{"hello too long", `{"event":"dmb:hello","service":"chat","token":"` + strings.Repeat("x", 2000) + `"}`, 1009},
	}
	for _, tc := range cases {
		c := newTCPClient(t, dialTCP(t, n))
		c.send(tc.hello)
		if code, reason := c.closed(); code != tc.code || reason == "" {
			t.Errorf("%s: closed with %d %q, want %d", tc.name, code, reason, tc.code)
		}
	}

	// No hello within the handshake timeout.
	silent := newTCPClient(t, dialTCP(t, n))
	if code, reason := silent.closed(); code != 1008 || reason != "no hello in time" {
		t.Errorf("silent client closed with %d %q, want 1008 no hello in time", code, reason)
	}

	// A line over DMB_MAX_MESSAGE_BYTES once connected.
	c := tcpConnect(t, n, "chat", "").welcome()
	b.next(ofTypeCID("client_connected", c.cid))
	c.send(`{"event":"dmb:message","data":"` + strings.Repeat("x", 4000) + `"}`)
	if code, _ := c.closed(); code != 1009 {
		t.Fatalf("closed with %d, want 1009", code)
	}
	if ev := b.next(ofTypeCID("client_disconnected", c.cid)); ev.Code != 1009 || ev.Resumable {
		t.Fatalf("client_disconnected = %+v, want 1009, not resumable", ev)
	}
}

// dialTCPNeverReading opens a TCP connection with a tiny receive buffer,
// which the test never reads: the node's writes to it stall.
func dialTCPNeverReading(t *testing.T, n *testNode) net.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: wait, Control: smallReceiveBuffer}
	conn, err := d.Dial("tcp", n.TCPAddr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestTCPSlowConsumerIsClosedWith4008(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withTCP(t), func(c *config.Config) {
		c.SendQueue = 32
		c.WriteTimeout = time.Second
	})
	b := e.startBackend("chat")
	slow := dialTCPNeverReading(t, n)
	if _, err := io.WriteString(slow, `{"event":"dmb:hello","service":"chat"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	ev := b.next(ofType("client_connected"))
	big := strings.Repeat("x", 16<<10)
	for i := range 300 {
		b.publish(t, fmt.Sprintf(`{"type":"broadcast","data":{"i":%d,"pad":"%s"}}`, i, big))
	}
	gone := b.next(ofTypeCID("client_disconnected", ev.CID))
	if gone.Code != 4008 {
		t.Fatalf("client_disconnected = %+v, want 4008", gone)
	}
}

func TestTCPClientsGet1001AtShutdown(t *testing.T) {
	n, _, c := tcpSetup(t)
	// A connection that has not said hello yet is closed too.
	quiet := newTCPClient(t, dialTCP(t, n))
	if err := n.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if code, _ := c.closed(); code != 1001 {
		t.Fatalf("closed with %d, want 1001", code)
	}
	if code, _ := quiet.closed(); code != 1001 {
		t.Fatalf("quiet connection closed with %d, want 1001", code)
	}
}

func TestTCPClientResumesItsSession(t *testing.T) {
	n, b, c := tcpSetup(t)
	if c.session == "" {
		t.Fatal("dmb:connected carries no session token")
	}
	_ = c.conn.Close()
	if gone := b.next(ofTypeCID("client_disconnected", c.cid)); gone.Code != 1006 || !gone.Resumable {
		t.Fatalf("client_disconnected = %+v, want 1006, resumable", gone)
	}
	r := tcpConnect(t, n, "chat", fmt.Sprintf(`"resume":%q`, c.session))
	f := r.next()
	if f.Event != "dmb:connected" || f.CID != c.cid || !f.Resumed {
		t.Fatalf("got %+v, want dmb:connected resumed with cid %s", f, c.cid)
	}
	if ev := b.next(ofTypeCID("client_connected", c.cid)); !ev.Resumed {
		t.Fatalf("client_connected = %+v, want resumed", ev)
	}
	b.publish(t, `{"type":"direct","cid":"`+c.cid+`","data":"welcome back"}`)
	if f := r.next(); string(f.Data) != `"welcome back"` {
		t.Fatalf("got %+v", f)
	}
}

func TestTCPProxyHeaderFromTrustedPeersOnly(t *testing.T) {
	e := newEnv(t)
	n := e.startNode(withTCP(t))
	b := e.startBackend("chat")
	hello := `{"event":"dmb:hello","service":"chat"}` + "\n"

	for _, version := range []byte{1, 2} {
		header := proxyproto.HeaderProxyFromAddrs(version,
			&net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 5555},
			&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8082})
		raw, err := header.Format()
		if err != nil {
			t.Fatal(err)
		}
		c := newTCPClient(t, dialTCP(t, n))
		if _, err := c.conn.Write(append(raw, hello...)); err != nil {
			t.Fatal(err)
		}
		c.welcome()
		if ev := b.next(ofTypeCID("client_connected", c.cid)); ev.Remote != "203.0.113.9" {
			t.Fatalf("PROXY v%d: client_connected = %+v, want remote 203.0.113.9", version, ev)
		}
	}

	// A node that trusts no loopback peer refuses the header.
	strict := e.startNode(withTCP(t), func(c *config.Config) { c.TrustedProxies = []string{"192.0.2.1/32"} })
	c := newTCPClient(t, dialTCP(t, strict))
	if _, err := io.WriteString(c.conn, "PROXY TCP4 203.0.113.9 127.0.0.1 5555 8082\r\n"+hello); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-c.frames:
		t.Fatalf("an untrusted peer's PROXY header got %+v", f)
	case <-c.ended:
	case <-time.After(wait):
		t.Fatal("an untrusted peer's PROXY header: connection still open")
	}
	// Without a header the same peer is a client like any other.
	plain := tcpConnect(t, strict, "chat", "").welcome()
	if ev := b.next(ofTypeCID("client_connected", plain.cid)); ev.Remote != "127.0.0.1" {
		t.Fatalf("client_connected = %+v, want remote 127.0.0.1", ev)
	}
}

func TestTCPClientOverTLS(t *testing.T) {
	cert := testcert.New(t)
	e := newEnv(t)
	n := e.startNode(withTCP(t), func(c *config.Config) { c.TLSCert, c.TLSKey = cert.CertFile, cert.KeyFile })
	b := e.startBackend("chat")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", n.TCPAddr().String(), cert.ClientConfig())
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	c := newTCPClient(t, conn)
	c.hello("chat", "")
	c.welcome()
	b.next(ofTypeCID("client_connected", c.cid))
	c.send(`{"event":"dmb:message","data":"secret","id":1}`)
	if ev := b.next(ofTypeCID("message", c.cid)); string(ev.Data) != `"secret"` {
		t.Fatalf("message = %+v", ev)
	}
	if f := c.next(); f.Event != "dmb:ack" {
		t.Fatalf("got %+v, want dmb:ack", f)
	}
	if err := b.Kick(e.ctx(), c.cid, "bye"); err != nil {
		t.Fatal(err)
	}
	if code, reason := c.closed(); code != 4009 || reason != "bye" {
		t.Fatalf("closed with %d %q, want 4009 bye", code, reason)
	}
}
