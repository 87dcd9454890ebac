package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/protocol"
)

// readServerFrame reads one unmasked frame as the node writes it.
func readServerFrame(t *testing.T, r *bufio.Reader) (op byte, payload []byte) {
	t.Helper()
	var head []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("read a frame header: %v", err)
		}
		head = append(head, b)
		h, n, err := wsframe.ParseHeader(head)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			payload = make([]byte, h.Length)
			if _, err := io.ReadFull(r, payload); err != nil {
				t.Fatalf("read a frame's payload: %v", err)
			}
			return h.Op, payload
		}
	}
}

// A flooder over its rate is answered and closed as before, and what it
// floods on with while its close is under way is dropped below the
// WebSocket library: the session's reader is handed at most the one frame
// the library had begun, not the thousands behind it, and the close
// handshake still ends with the client's close frame.
func TestAFloodAfterTheCloseBeganIsDroppedWithoutTheLibrary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := &countingUplink{}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.ClientErrorLimit = 3
		c.ClientRate = 0.001
		c.ClientBurst = 5 // no token comes back within the test
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	c, r := rawUpgrade(t, addr)
	if op, p := readServerFrame(t, r); op != wsframe.OpText || !strings.Contains(string(p), "dmb:connected") {
		t.Fatalf("first frame %d %s, want dmb:connected", op, p)
	}
	waitFor(t, ctx, func() bool { return brk.Clients() == 1 })
	before := libraryDiscards.Load()

	// The burst, one more than the error limit over the rate, then 1,000
	// frames (48 kB, within what a closing session reads), in one write.
	key := [4]byte{1, 2, 3, 4}
	var b []byte
	for id := range 5 + 4 + 1000 {
		b = wsframe.AppendMasked(b, wsframe.OpText, fmt.Appendf(nil, `{"event":"dmb:message","data":"flood","id":%d}`, id), key)
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}

	for id := 5; id < 9; id++ {
		want := protocol.AppendError(nil, fmt.Appendf(nil, "%d", id), protocol.ErrTextRateLimited)
		if op, p := readServerFrame(t, r); op != wsframe.OpText || !bytes.Equal(p, want) {
			t.Fatalf("answer to frame %d: %d %q, want %s", id, op, p, want)
		}
	}
	op, p := readServerFrame(t, r)
	if op != wsframe.OpClose || len(p) < 2 || binary.BigEndian.Uint16(p) != protocol.ClosePolicy {
		t.Fatalf("after the answers: frame %d %x, want close 1008", op, p)
	}
	// The client answers the close; the node finds the answer behind the
	// flood and ends the connection: nothing more comes.
	if _, err := c.Write(wsframe.AppendMasked(nil, wsframe.OpClose, p[:2], key)); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) > 0 {
		t.Fatalf("after the close: %x, %v; want the end", rest, err)
	}
	waitFor(t, ctx, func() bool { return brk.Clients() == 0 })
	if n := up.messages.Load(); n != 5 {
		t.Fatalf("%d frames passed on, want the burst of 5", n)
	}
	if n := libraryDiscards.Load() - before; n > 1 {
		t.Fatalf("the library handed the closing session %d frames of the flood, want 1 at most", n)
	}
}
