package wsconn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// discardStream is a client's stream for the discarder: data frames of
// every length form around a ping, a pong and a close frame, masked.
func discardStream() []byte {
	key := [4]byte{1, 2, 3, 4}
	b := clientFrames()[:0:0]
	for _, n := range []int{5, 0, 126, 70000} {
		b = wsframe.AppendMasked(b, wsframe.OpText, bytes.Repeat([]byte("d"), n), key)
	}
	b = wsframe.AppendMasked(b, wsframe.OpPing, []byte("p"), key)
	b = wsframe.AppendMasked(b, wsframe.OpBinary, bytes.Repeat([]byte("b"), 300), key)
	b = wsframe.AppendMasked(b, wsframe.OpPong, nil, key)
	b = wsframe.AppendMasked(b, wsframe.OpText, []byte("x"), key)
	return wsframe.AppendMasked(b, wsframe.OpClose, []byte{0x03, 0xe8}, key)
}

// keptFrom is what the library must be handed of stream once it has read
// its first k bytes and the dropping begins: the rest of the frame it
// began, then the control frames. A valid stream only.
func keptFrom(stream []byte, k int) []byte {
	var kept []byte
	for i := 0; i < len(stream); {
		h, n, err := wsframe.ParseHeader(stream[i:])
		if err != nil || n == 0 {
			panic("not a valid stream")
		}
		end := i + n + h.Length
		switch {
		case end <= k:
		case i < k:
			kept = append(kept, stream[k:end]...)
		case h.Op&0x8 != 0:
			kept = append(kept, stream[i:end]...)
		}
		i = end
	}
	return kept
}

// discardChunks runs the dropping over stream from byte k on, split into
// reads of chunk bytes, as netConn does: it returns what the library is
// handed, what was dropped, and what is held of a header not yet whole.
func discardChunks(stream []byte, k, chunk int) (kept []byte, dropped, held int) {
	t := frameTracker{on: true}
	t.feed(stream[:k])
	if !t.on {
		return nil, 0, 0
	}
	d := discarder{on: true, pass: t.left > 0, handed: t.nhead}
	for i := k; i < len(stream); i += chunk {
		b := bytes.Clone(stream[i:min(i+chunk, len(stream))])
		if !d.on {
			kept = append(kept, b...)
			continue
		}
		out, n := d.filter(&t, b)
		kept = append(append(kept, d.lead[:d.nlead]...), out...)
		d.nlead = 0
		dropped += n
	}
	if d.on {
		held = t.nhead - d.handed
	}
	return kept, dropped, held
}

func TestTheDiscarderHandsOnOnlyControlFramesHoweverTheReadsSplitThem(t *testing.T) {
	stream := discardStream()
	for _, k := range []int{0, 1, 2, 7, 8, 20, 200, len(stream) - 3, len(stream)} {
		want := keptFrom(stream, k)
		for _, chunk := range []int{1, 2, 3, 5, 14, 64, 4096, len(stream)} {
			got, dropped, _ := discardChunks(stream, k, chunk)
			if !bytes.Equal(got, want) {
				t.Fatalf("from byte %d in chunks of %d: handed on %d bytes %x..., want %d", k, chunk, len(got), got[:min(len(got), 16)], len(want))
			}
			if dropped+len(got) != len(stream)-k {
				t.Fatalf("from byte %d in chunks of %d: %d dropped and %d handed on of %d", k, chunk, dropped, len(got), len(stream)-k)
			}
		}
	}
}

// FuzzDiscarder drops the data frames of any bytes, split anywhere and
// begun anywhere: it never panics, drops or hands on every byte once (or
// holds it, the start of a header), and
// hands on the same bytes however the reads split them.
func FuzzDiscarder(f *testing.F) {
	f.Add(discardStream()[:300], 0, 3)
	f.Add(discardStream()[:40], 7, 1)
	f.Add([]byte{0x89, 0x81, 0, 0, 0, 0, 0x70, 0x81, 0x80, 0, 0, 0, 0}, 0, 1)
	f.Add([]byte{0x81, 0xfe, 0x00, 0x10, 0xff, 0xff}, 1, 2)
	f.Fuzz(func(t *testing.T, data []byte, k, chunk int) {
		k = min(max(k, 0), len(data))
		chunk = max(1, chunk%64)
		whole, wholeDropped, _ := discardChunks(data, k, max(len(data), 1))
		split, splitDropped, held := discardChunks(data, k, chunk)
		if !bytes.Equal(whole, split) || wholeDropped != splitDropped {
			t.Fatalf("whole: %x, %d dropped; in chunks of %d: %x, %d dropped", whole, wholeDropped, chunk, split, splitDropped)
		}
		tr := frameTracker{on: true}
		tr.feed(data[:k])
		if tr.on && len(split)+splitDropped+held != len(data)-k {
			t.Fatalf("%d handed on, %d dropped and %d held of %d", len(split), splitDropped, held, len(data)-k)
		}
	})
}

// discardServer serves one WebSocket through Listen: it writes a frame
// (which sends the 101), reads the client's first frame, has the
// connection discard within budget, and reports what ends Next then: the
// frame the library had begun may still come out, no other may.
func discardServer(t *testing.T, budget int) (addr string, next <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	srv := &http.Server{ConnContext: ConnContext, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		opt := &Options{ReadLimit: 1 << 20, WriteTimeout: 5 * time.Second, Context: context.Background()}
		c, err := Accept(w, r, opt)
		if err != nil {
			got <- err
			return
		}
		defer c.CloseNow()
		if err := c.WriteMany([][]byte{[]byte("hi")}); err != nil {
			got <- err
			return
		}
		_, fr, err := c.Next()
		if err == nil {
			_, err = io.Copy(io.Discard, fr)
		}
		if err != nil {
			got <- err
			return
		}
		if !c.Discard(budget) {
			got <- errors.New("the connection cannot discard")
			return
		}
		// The library may hold the start of the next frame already: that
		// one frame is its own. No other comes out.
		for i := 0; ; i++ {
			_, fr, err = c.Next()
			if err == nil && i > 0 {
				b, _ := io.ReadAll(fr)
				err = errors.New("Next handed out a data frame: " + string(b))
			}
			if err != nil {
				got <- err
				return
			}
			if _, err := io.Copy(io.Discard, fr); err != nil {
				got <- err
				return
			}
		}
	})}
	go func() { _ = srv.Serve(Listen(ln)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), got
}

// dialDiscard makes the handshake with addr by hand and reads the 101
// and the server's first frame.
func dialDiscard(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	hi := make([]byte, 4)
	if _, err := io.ReadFull(r, hi); err != nil || string(hi[2:]) != "hi" {
		t.Fatalf("first frame %q, %v", hi, err)
	}
	return c
}

// A discarding connection hands the session none of the data frames in
// front of the client's close frame: Next returns the close itself.
func TestADiscardingConnectionReturnsTheCloseBehindAFlood(t *testing.T) {
	addr, next := discardServer(t, 1<<20)
	c := dialDiscard(t, addr)
	key := [4]byte{5, 6, 7, 8}
	b := wsframe.AppendMasked(nil, wsframe.OpText, []byte("first"), key)
	for range 5000 {
		b = wsframe.AppendMasked(b, wsframe.OpText, []byte(`{"event":"dmb:message","data":"flood","id":1}`), key)
	}
	b = wsframe.AppendMasked(b, wsframe.OpPing, []byte("still there?"), key)
	b = wsframe.AppendMasked(b, wsframe.OpBinary, []byte("binary"), key)
	b = wsframe.AppendMasked(b, wsframe.OpClose, append([]byte{0x0f, 0xa0}, "bye"...), key) // 4000
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-next:
	case <-time.After(10 * time.Second):
		t.Fatal("Next did not return")
	}
	if code, reason := CloseStatus(err); code != 4000 || reason != "bye" {
		t.Fatalf("Next: %v (%d %q), want the client's close 4000 bye", err, code, reason)
	}
	// The ping was answered, and the close frame after the pong.
	rest, _ := io.ReadAll(c)
	pong := []byte{0x8a, byte(len("still there?"))}
	if i, j := bytes.Index(rest, append(pong, "still there?"...)), bytes.IndexByte(rest, 0x88); i < 0 || j < i {
		t.Fatalf("the client read %x, want the pong and then the close", rest)
	}
}

// A client that sends more than the budget after the discarding began is
// cut off: Next fails, with no close frame of the client's.
func TestADiscardingConnectionEndsPastItsBudget(t *testing.T) {
	addr, next := discardServer(t, 64<<10)
	c := dialDiscard(t, addr)
	key := [4]byte{5, 6, 7, 8}
	frame := wsframe.AppendMasked(nil, wsframe.OpText, bytes.Repeat([]byte("f"), 1000), key)
	go func() {
		for {
			if _, err := c.Write(frame); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-next:
		if err == nil || !strings.Contains(err.Error(), errDiscardBudget.Error()) {
			t.Fatalf("Next: %v, want the budget's error", err)
		}
		if code, _ := CloseStatus(err); code != 1006 {
			t.Fatalf("close status %d, want 1006", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the flood was read past the budget")
	}
}
