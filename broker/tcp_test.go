package broker

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/looptest"
)

// failingWriter takes n bytes, then fails.
type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errors.New("connection reset")
	}
	w.n -= len(p)
	return len(p), nil
}

// A write that fails leaves nothing of its client's lines for the next
// connection that borrows the buffer.
func TestAFailedTCPWriteLeavesNothingForTheNextClient(t *testing.T) {
	big := strings.Repeat("x", lineChunk/4)
	for range 50 {
		failed := &tcpConn{w: &failingWriter{}}
		if err := failed.WriteMany([][]byte{[]byte(`{"secret":"` + big + `"}`), []byte(`{"secret":2}`)}); err == nil {
			t.Fatal("WriteMany to a failing writer succeeded")
		}
		var out bytes.Buffer
		next := &tcpConn{w: &out}
		if err := next.WriteMany([][]byte{[]byte(`{"event":"dmb:connected"}`)}); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); got != `{"event":"dmb:connected"}`+"\n" {
			t.Fatalf("the next client got %.80q, want only its own line", got)
		}
	}
}

// TCP clients that connected together and never say hello are cut over a
// quarter of the handshake timeout, not all in one instant.
func TestSilentTCPClientsAreCutApart(t *testing.T) {
	const timeout = time.Second
	brk := newTestBroker(t)
	ln := looptest.Listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = brk.ServeTCP(ctx, ln, TCPOptions{HandshakeTimeout: timeout}) }()
	t.Cleanup(func() { cancel(); <-served })
	looptest.CutApart(t, ln.Addr().String(), 50, `{"event":"dmb:hel`, timeout)
}
