package node

import (
	"net"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/dmb-broker/dmb/internal/looptest"
)

// The client listener takes its turn among the goroutines: one that was
// ready before a burst of connections reached the accept loop runs once
// acceptTurn of them are taken, not after all of them. On one processor,
// without the yield, the loop takes the whole backlog in one time slice.
func TestClientListenerTakesItsTurnInABurst(t *testing.T) {
	const burst = 200
	inner := looptest.Listen(t)
	dialBurst(t, inner.Addr().String(), burst)

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ln := &clientListener{Listener: inner}
	var taken atomic.Int32
	seen := make(chan int32, 1)
	go func() { seen <- taken.Load() }() // ready, waiting for the processor
	acceptBurst(t, ln, burst, &taken)
	if got := <-seen; got > 2*acceptTurn {
		t.Errorf("a goroutine ready before the burst ran after %d of its %d connections were taken, want it to run within the first %d", got, burst, acceptTurn)
	}
}

// Its turn lets in the goroutines that the network woke meanwhile too: a
// connected client whose frame arrived as the burst began is read within
// it. runtime.Gosched would leave that client's reader waiting for the
// runtime's monitor, up to 10 ms, with the burst's goroutines always
// ready to run.
func TestClientListenerLetsTheNetworkInDuringABurst(t *testing.T) {
	const burst = 200
	inner := looptest.Listen(t)
	ln := listenClients(inner, 0)
	defer ln.Close()
	server, client := looptest.Pair(t, ln)
	dialBurst(t, inner.Addr().String(), burst)

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var taken, readAt atomic.Int32
	readAt.Store(-1)
	read := make(chan struct{})
	go func() { // blocks in the network poller until the client writes
		defer close(read)
		if _, err := server.Read(make([]byte, 1)); err == nil {
			readAt.Store(taken.Load())
		}
	}()
	runtime.Gosched()
	if _, err := client.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	acceptBurst(t, ln, burst, &taken)
	client.Close()
	<-read
	if got := readAt.Load(); got < 0 || got > 2*acceptTurn {
		t.Errorf("a client's frame was read after %d of a burst of %d connections were taken, want within the first %d", got, burst, acceptTurn)
	}
}

// dialBurst opens n connections to addr, each waiting in the kernel's
// backlog once Dial returns; they are closed when the test ends.
func dialBurst(t *testing.T, addr string, n int) {
	t.Helper()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
}

// acceptBurst accepts n connections from ln, counting each in taken; they
// are closed when the test ends.
func acceptBurst(t *testing.T, ln net.Listener, n int, taken *atomic.Int32) {
	t.Helper()
	for range n {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		taken.Add(1)
	}
}
