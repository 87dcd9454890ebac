package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dmb-broker/dmb/internal/wsframe"
)

// countingListener counts the writes made to the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestAWriterSendsEveryQueuedFrameInOneSocketWrite(t *testing.T) {
	brk := newTestBroker(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	mux := http.NewServeMux()
	mux.Handle("GET /ws/{service}", brk)
	srv := &http.Server{Handler: mux, ConnContext: ConnContext}
	go func() { _ = srv.Serve(Listen(ln)) }()
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+inner.Addr().String()+"/ws/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, _, err := c.Read(ctx); err != nil { // dmb:connected
		t.Fatal(err)
	}
	// The session is indexed before its first frame is written.
	var sess *client
	brk.mu.RLock()
	for _, s := range brk.byCID {
		sess = s
	}
	brk.mu.RUnlock()
	if sess == nil {
		t.Fatal("no session after dmb:connected")
	}

	const n = 100
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = []byte(fmt.Sprintf(`{"event":"dmb:broadcast","data":%d}`, i))
	}
	before := ln.writes.Load()
	if err := sess.write(frames); err != nil {
		t.Fatal(err)
	}
	if got := ln.writes.Load() - before; got != 1 {
		t.Fatalf("%d frames took %d socket writes, want 1", n, got)
	}
	for i := range n {
		_, data, err := c.Read(ctx)
		if err != nil || string(data) != string(frames[i]) {
			t.Fatalf("frame %d = %q, %v", i, data, err)
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection, the server's
// wrapped as Listen wraps it.
func tcpPair(t *testing.T) (*corkConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Listen(ln).Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	return server.(*corkConn), client
}

func TestSmallReadsHoldABufferOnlyWhileBytesWait(t *testing.T) {
	srv, cli := tcpPair(t)
	if _, err := cli.Write([]byte("hello, world")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	p := make([]byte, 5)
	for len(got) < 12 {
		n, err := srv.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p[:n]...)
		if len(got) < 12 && srv.pending == nil {
			t.Fatal("unread bytes lost their buffer")
		}
	}
	if string(got) != "hello, world" {
		t.Fatalf("read %q", got)
	}
	if srv.pending != nil || srv.unread != nil {
		t.Fatal("a drained connection still holds its read buffer")
	}
	_ = cli.Close()
	if n, err := srv.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed = %d, %v; want io.EOF", n, err)
	}
}

func TestASmallReadAllocatesNothing(t *testing.T) {
	srv, cli := tcpPair(t)
	b, p := []byte{'x'}, make([]byte, 16)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := cli.Write(b); err != nil {
			t.Fatal(err)
		}
		if n, err := srv.Read(p); n != 1 || err != nil {
			t.Fatalf("read %d, %v; want the byte written", n, err)
		}
	})
	if allocs >= 1 {
		t.Fatalf("a small read costs %.1f allocations; want none", allocs)
	}
}

func TestAwaitInputReturnsWhenTheClientSpeaks(t *testing.T) {
	srv, cli := tcpPair(t)
	srv.br = bufio.NewReaderSize(srv, leanReadBuffer)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.awaitInput()
	}()
	select {
	case <-done:
		t.Fatal("awaitInput returned before the client sent anything")
	case <-time.After(50 * time.Millisecond): // a bound on a wait that must not end
	}
	if _, err := cli.Write([]byte("0123456789abcdefXYZ")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("awaitInput still waits after the client spoke")
	}
	// The reader's buffer takes 16 bytes; awaitInput must then not wait
	// for more while 3 are buffered in corkConn and the rest in the reader.
	head := make([]byte, 16)
	if _, err := io.ReadFull(srv.br, head[:2]); err != nil {
		t.Fatal(err)
	}
	srv.awaitInput() // returns at once: bytes are buffered
	rest, err := io.ReadAll(io.LimitReader(srv.br, 17))
	if err != nil || string(head[:2])+string(rest) != "0123456789abcdefXYZ" {
		t.Fatalf("read %q%q, %v", head[:2], rest, err)
	}
}

// TestLeanBuffersCarryLargeAndPipelinedFramesAndPings drives a session
// whose library buffers leanWriter made small: a frame larger than every
// buffer, frames sent back to back, and a ping answered from the reading
// side.
func TestLeanBuffersCarryLargeAndPipelinedFramesAndPings(t *testing.T) {
	brk := newTestBroker(t)
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, _, err := c.Read(ctx); err != nil { // dmb:connected
		t.Fatal(err)
	}
	// Unknown events are answered with an error carrying the id: an echo
	// that needs no backend.
	frames := []string{
		`{"event":"nope","id":1,"pad":"` + strings.Repeat("x", 20000) + `"}`,
		`{"event":"nope","id":2}`, `{"event":"nope","id":3}`, `{"event":"nope","id":4}`,
	}
	for _, f := range frames {
		if err := c.Write(ctx, websocket.MessageText, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range frames {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`"id":%d`, i+1); !strings.Contains(string(data), want) {
			t.Fatalf("answer %d = %s, want %s", i, data, want)
		}
	}
	// A ping is answered, with a pong written from the session's reading
	// side. The client reads to receive the pong, until the ping returns.
	readCtx, stopReading := context.WithCancel(ctx)
	pinged := make(chan error, 1)
	go func() { pinged <- c.Ping(ctx); stopReading() }()
	if _, data, err := c.Read(readCtx); err == nil {
		t.Fatalf("unexpected frame %s", data)
	}
	if err := <-pinged; err != nil {
		t.Fatalf("ping: %v", err)
	}
}

// A write that waits for the socket (the library answering a ping or a
// close into a full socket) holds the connection: the fan-out's and the
// flushers' writes must not wait for it, or one client that stops reading
// would hold up every other.
func TestWritesThatMustNotWaitDoNotWaitForABlockedWrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	server, client := tcpPair(t)
	blocked := make(chan error, 1)
	go func() {
		// Far more than the socket buffers hold while the client does not read.
		_, err := server.Write(make([]byte, 64<<20))
		blocked <- err
	}()
	waitFor(t, ctx, func() bool {
		if server.mu.TryLock() {
			server.mu.Unlock()
			return false
		}
		return true
	})
	outcomes := make(chan [2]writeOutcome, 1)
	go func() {
		outcomes <- [2]writeOutcome{server.tryWrite([]byte("frame")), server.tryWriteFrames([][]byte{[]byte("x")})}
	}()
	select {
	case got := <-outcomes:
		if got[0] != wroteNone || got[1] != wroteNone {
			t.Fatalf("tryWrite, tryWriteFrames = %v, %v; want wroteNone for both", got[0], got[1])
		}
	case <-ctx.Done():
		t.Fatal("a write that must not wait waited for the blocked write")
	}
	go func() { _, _ = io.Copy(io.Discard, client) }()
	if err := <-blocked; err != nil {
		t.Fatalf("the blocked write: %v", err)
	}
}

// A direct write goes to the socket at once; once the peer has reset the
// connection, a read reports it and a direct write takes nothing, so the
// frame is queued and the writer reports the failure.
func TestADirectWriteIsSentAndOneToAResetPeerTakesNothing(t *testing.T) {
	server, client := tcpPair(t)
	server.mu.Lock()
	server.takeFD()
	server.mu.Unlock()
	if got := server.tryWrite([]byte("frame")); got != wroteAll {
		t.Fatalf("tryWrite to a live peer = %v, want wroteAll", got)
	}
	buf := make([]byte, 5)
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "frame" {
		t.Fatalf("the peer read %q, %v; want frame", buf, err)
	}
	if err := client.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	_ = client.Close() // a reset
	// The read waits for the reset: a small read goes to the descriptor.
	_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := server.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the peer's reset: %v, want ECONNRESET", err)
	}
	for i := range 3 {
		if got := server.tryWrite([]byte("frame")); got != wroteNone {
			t.Fatalf("tryWrite %d to a reset peer = %v, want wroteNone", i, got)
		}
	}
}

// Without a descriptor (fd -1: Windows, or a connection that has none)
// nothing is written directly: a direct write takes nothing, a flusher's
// write keeps its frames as the tail, and the writer sends them through
// the connection.
func TestWithoutADescriptorFramesGoThroughTheWriter(t *testing.T) {
	server, client := tcpPair(t)
	if server.fd != -1 {
		t.Fatalf("fd = %d before takeFD, want -1", server.fd)
	}
	if got := server.tryWrite([]byte("frame")); got != wroteNone {
		t.Fatalf("tryWrite = %v, want wroteNone", got)
	}
	if got := server.tryWriteFrames([][]byte{[]byte("a"), []byte("bc")}); got != wrotePart {
		t.Fatalf("tryWriteFrames = %v, want wrotePart", got)
	}
	if err := server.flushTail(); err != nil {
		t.Fatal(err)
	}
	want := wsframe.AppendText(wsframe.AppendText(nil, []byte("a")), []byte("bc"))
	got := make([]byte, len(want))
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the peer read %q, %v; want %q", got, err, want)
	}
}
