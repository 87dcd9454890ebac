package broker

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/protocol"
)

// A client that begins a frame and never finishes it loses its connection
// after the frame timeout; one that stays idle between frames keeps it.
func TestAHalfSentFrameIsCutAfterTheFrameTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	up := disconnects{make(chan int, 2)}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.SendQueue = 64
		c.FrameTimeout = 300 * time.Millisecond
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })

	idle, _ := rawUpgrade(t, addr)
	half, _ := rawUpgrade(t, addr)
	waitFor(t, ctx, func() bool { return brk.Clients() == 2 })
	// The idle client pings once, whole, then says nothing.
	if _, err := idle.Write(wsframe.AppendMasked(nil, 0x9, []byte("hi"), [4]byte{1, 2, 3, 4})); err != nil {
		t.Fatal(err)
	}
	frame := wsframe.AppendMasked(nil, 0x1, []byte(`{"event":"dmb:message","data":"`+string(make([]byte, 100))+`"}`), [4]byte{1, 2, 3, 4})
	if _, err := half.Write(frame[:20]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case code := <-up.codes:
		if code != protocol.CloseAbnormal {
			t.Fatalf("the half frame's session ended with %d, want %d", code, protocol.CloseAbnormal)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Fatalf("cut after %v, before the frame timeout", took)
		}
	case <-ctx.Done():
		t.Fatal("a half-sent frame held its connection")
	}
	// The idle client, quiet since its ping for more than the frame
	// timeout, is still connected.
	deadline := time.Now().Add(600 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := brk.Clients(); n != 1 {
			t.Fatalf("%d clients left, want the idle one", n)
		}
		time.Sleep(50 * time.Millisecond) // watching a state that must not change
	}
}

// rawUpgrade opens a WebSocket to /ws/chat by hand, so that a test can
// send bytes the library would not, or leave unanswered what it would
// answer. It returns the connection and a reader of what follows the 101.
func rawUpgrade(t *testing.T, addr string, header ...string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	req := "GET /ws/chat HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, h := range header {
		req += h + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	return c, r
}

// A refused client that never answers the close frame holds its
// connection for the close wait, not the library's 5 s.
func TestARefusedClientThatDoesNotAnswerTheCloseIsDroppedSoon(t *testing.T) {
	brk := newTestBrokerWith(t, nullUplink{})
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	start := time.Now()
	_, r := rawUpgrade(t, addr, "Origin: https://evil.example")
	if _, err := io.Copy(io.Discard, r); err != nil { // the close frame, then the end
		t.Fatalf("read until the end: %v", err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("the refused connection was held %v", took)
	}
}
