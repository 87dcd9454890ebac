package broker

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/protocol"
)

func TestAClientOverItsRateIsAnsweredRateLimitedThenClosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := &countingUplink{}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.SendQueue = 64
		c.ClientErrorLimit = 3
		c.ClientRate = 0.001
		c.ClientBurst = 5 // no token comes back within the test
	})))
	c := dialBroker(t, ctx, brk)
	send := func(id int) {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"event":"dmb:message","data":%d,"id":%d}`, id, id)); err != nil {
			t.Fatal(err)
		}
	}
	for id := range 5 {
		send(id)
	}
	// The burst passed on; the next frames are answered, not passed on.
	for id := 5; id < 8; id++ {
		send(id)
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := string(protocol.AppendError(nil, fmt.Appendf(nil, "%d", id), protocol.ErrTextRateLimited)); string(data) != want {
			t.Fatalf("answer to frame %d = %s, want %s", id, data, want)
		}
	}
	if n := up.messages.Load(); n != 5 {
		t.Fatalf("%d frames passed on, want the burst of 5", n)
	}
	// One more than DMB_CLIENT_ERROR_LIMIT over the rate: 1008.
	send(8)
	_, data, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(data), protocol.ErrTextRateLimited) {
		t.Fatalf("read %s, %v; want the last rate-limited answer", data, err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != protocol.ClosePolicy {
		t.Fatalf("read after going on over the rate: %v, want close 1008", err)
	}
}

// A client that sends faster than its rate is read at its rate: after a
// frame over the rate its reader waits for the next token, so the frame
// after is passed on, and its frames cost the node nothing meanwhile.
// Refused at full speed instead, all but the first of a batch would be.
func TestAClientOverItsRateIsReadAtItsRate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	up := &countingUplink{}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.ClientErrorLimit = 1000
		c.ClientRate = 20
		c.ClientBurst = 1
	})))
	c := dialBroker(t, ctx, brk)
	const k = 10
	sendAtOnce(t, ctx, c, 2*k+1)
	refused := 0
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), `"id":"end"`) {
			break
		}
		if !strings.Contains(string(data), protocol.ErrTextRateLimited) {
			t.Fatalf("answer %s, want rate limited", data)
		}
		refused++
	}
	passed := int(up.messages.Load())
	if passed+refused != 2*k+1 || passed < k+1 {
		t.Fatalf("of %d frames sent at once, %d passed on and %d refused; want at least %d passed on, at the rate",
			2*k+1, passed, refused, k+1)
	}
}

// A new connection has a tenth of its burst at once; in its first second
// the rest is read at its rate, delayed and never refused, so that a
// flooder that reconnects for a fresh burst gets little from each
// connection.
func TestANewClientsBurstIsReadAtItsRateAfterATenth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	up := &countingUplink{}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.ClientRate = 20
		c.ClientBurst = 100 // 10 at once
	})))
	c := dialBroker(t, ctx, brk)
	const n = 25
	start := time.Now()
	sendAtOnce(t, ctx, c, n)
	_, data, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(data), `"id":"end"`) {
		t.Fatalf("read %s, %v; want only the answer to the bad frame", data, err)
	}
	took := time.Since(start)
	if passed := up.messages.Load(); passed != n {
		t.Fatalf("%d of %d frames passed on; none may be refused", passed, n)
	}
	// Heavy (see uplink.Message) while the client is new.
	if heavy := up.heavy.Load(); heavy < 10 {
		t.Fatalf("%d of %d frames passed on as heavy, want those of the first second", heavy, n)
	}
	// 15 frames after the first 10, at 20 a second.
	if min := 15 * time.Second / 20 * 2 / 3; took < min {
		t.Fatalf("%d frames read in %v from a new client; want at least %v, at its rate after the first 10", n, took, min)
	}
}

// sendAtOnce writes n messages without waiting, then a bad frame with the
// id "end", whose answer comes once the n were handled.
func sendAtOnce(t *testing.T, ctx context.Context, c *websocket.Conn, n int) {
	t.Helper()
	for range n {
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:nope","id":"end"}`)); err != nil {
		t.Fatal(err)
	}
}

// A flooder closed with 1008 fills its socket with frames faster than the
// close handshake could discard them: the handshake reads a bounded
// amount, then drops the connection, long before its 2 s wait is out. Its
// frames are bad ones, which are answered at once (frames over the rate
// would be paced, and the close come later).
func TestAClosedFlooderCostsTheCloseHandshakeABoundedRead(t *testing.T) {
	brk := runBroker(t, New(liveRegistry{}, &countingUplink{}, testConfig(func(c *Config) {
		c.ClientErrorLimit = 3
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	c, _ := rawUpgrade(t, addr)
	// Masked with a zero key, so the payload is written as is.
	payload := []byte(`{"event":"dmb:nope","data":"flood","id":1}`)
	frame := append([]byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	batch := bytes.Repeat(frame, 1000)
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(10 * time.Second))
	for {
		if _, err := c.Write(batch); err != nil {
			break
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the flooder's connection was dropped after %v; the close handshake read what it sent", took)
	}
}

// A flooder that reads nothing holds its close frame behind the answers
// it does not read: the session stops reading it once it has thrown away
// a bounded amount, instead of reading on until the write times out. Its
// frames are bad ones, which are answered at once (frames over the rate
// would be paced).
func TestAFlooderThatDoesNotReadIsDroppedWhileItsCloseWaits(t *testing.T) {
	brk := runBroker(t, New(liveRegistry{}, &countingUplink{}, testConfig(func(c *Config) {
		c.ClientErrorLimit = 400 // closed after its answers fill the sockets
		c.WriteTimeout = 30 * time.Second
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	c, _ := rawUpgrade(t, addr)
	// Each bad frame is answered with its id, 30 kB: the answers fill
	// both sockets long before the close.
	id := strings.Repeat("i", 30<<10)
	payload := []byte(`{"event":"dmb:nope","id":"` + id + `"}`)
	big := append([]byte{0x81, 0xff, 0, 0, 0, 0, 0, 0, byte(len(payload) >> 8), byte(len(payload)), 0, 0, 0, 0}, payload...)
	small := []byte(`{"event":"dmb:message","data":1}`)
	smallFrame := bytes.Repeat(append([]byte{0x81, 0x80 | byte(len(small)), 0, 0, 0, 0}, small...), 1000)
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(25 * time.Second))
	for i := 0; ; i++ {
		frame := smallFrame
		if i < 450 {
			frame = big
		}
		if _, err := c.Write(frame); err != nil {
			break
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the flooder was read for %v while its close waited", took)
	}
}
