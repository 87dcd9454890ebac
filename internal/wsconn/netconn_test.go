package wsconn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/looptest"
	"github.com/dmb-broker/dmb/internal/wsframe"
)

// tcpPair returns the two ends of a loopback TCP connection, the server's
// wrapped as Listen wraps it.
func tcpPair(t *testing.T) (*netConn, net.Conn) {
	t.Helper()
	server, client := looptest.Pair(t, Listen(looptest.Listen(t)))
	return server.(*netConn), client
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
	// for more while 3 are buffered in netConn and the rest in the reader.
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
	// The write holds the connection once it blocks.
	for server.mu.TryLock() {
		server.mu.Unlock()
		select {
		case <-ctx.Done():
			t.Fatal("the write never blocked")
		case <-time.After(time.Millisecond):
		}
	}
	outcomes := make(chan [2]bool, 1)
	go func() {
		took, _ := server.tryWrite([]byte("frame"))
		tookMany, _ := server.tryWriteFrames([][]byte{[]byte("x")})
		outcomes <- [2]bool{took, tookMany}
	}()
	select {
	case got := <-outcomes:
		if got[0] || got[1] {
			t.Fatalf("tryWrite, tryWriteFrames took %v, %v; want nothing taken by either", got[0], got[1])
		}
	case <-ctx.Done():
		t.Fatal("a write that must not wait waited for the blocked write")
	}
	go func() { _, _ = io.Copy(io.Discard, client) }()
	if err := <-blocked; err != nil {
		t.Fatalf("the blocked write: %v", err)
	}
}

// An inline write goes to the socket at once; once the peer has reset the
// connection, a read reports it and an inline write takes nothing, so the
// frame is queued and the writer reports the failure.
func TestAnInlineWriteIsSentAndOneToAResetPeerTakesNothing(t *testing.T) {
	server, client := tcpPair(t)
	server.mu.Lock()
	server.takeFDLocked()
	server.mu.Unlock()
	if took, tail := server.tryWrite([]byte("frame")); !took || tail {
		t.Fatalf("tryWrite to a live peer took %v with tail %v, want all of it", took, tail)
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
		if took, _ := server.tryWrite([]byte("frame")); took {
			t.Fatalf("tryWrite %d to a reset peer took the frame, want nothing taken", i)
		}
	}
}

// Without a descriptor (fd -1: Windows, or a connection that has none)
// nothing is written inline: tryWrite takes nothing, a flusher's
// write keeps its frames as the tail, and the writer sends them through
// the connection.
func TestWithoutADescriptorFramesGoThroughTheWriter(t *testing.T) {
	server, client := tcpPair(t)
	if server.fd != -1 {
		t.Fatalf("fd = %d before takeFDLocked, want -1", server.fd)
	}
	if took, _ := server.tryWrite([]byte("frame")); took {
		t.Fatal("tryWrite took the frame, want nothing taken")
	}
	if took, tail := server.tryWriteFrames([][]byte{[]byte("a"), []byte("bc")}); !took || !tail {
		t.Fatalf("tryWriteFrames took %v with tail %v, want all of it kept as the tail", took, tail)
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

func TestNoDataFrameFollowsTheCloseFrame(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	nc := &netConn{Conn: a, framed: true, fd: -1}
	go func() { _, _ = b.Read(make([]byte, 16)) }()
	if _, err := nc.Write([]byte{0x88, 0x02, 0x03, 0xe8}); err != nil { // close 1000
		t.Fatal(err)
	}
	if err := nc.writeFrames([][]byte{[]byte(`{}`)}); err == nil {
		t.Fatal("a data frame was written after the close frame")
	}
	if took, _ := nc.tryWrite(wsframe.AppendText(nil, []byte(`{}`))); took {
		t.Fatal("an inline write went out after the close frame")
	}
}
