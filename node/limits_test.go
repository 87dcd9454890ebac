package node

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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
	ln := listenClients(inner, 0, nil)
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
// are closed when the test ends. It fails the test with t.Error, so that
// it may run on a goroutine of its own.
func acceptBurst(t *testing.T, ln net.Listener, n int, taken *atomic.Int32) {
	t.Helper()
	for range n {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { _ = c.Close() })
		taken.Add(1)
	}
}

// The accept pace holds for all of a node's client listeners together: 60
// connections waiting on two listeners, taken at 200 a second in bursts
// of 2, take at least the 58 beyond the burst's 290 ms, and each of those
// 58 is counted once.
func TestClientListenersTakeConnectionsAtTheAcceptPace(t *testing.T) {
	const (
		rate    = 200
		perLn   = 30
		waiting = 2 * perLn
	)
	paced := prometheus.NewCounter(prometheus.CounterOpts{Name: "paced"})
	pace := newAcceptPace(rate, paced)
	var lns []*clientListener
	for range 2 {
		inner := looptest.Listen(t)
		dialBurst(t, inner.Addr().String(), perLn)
		ln := listenClients(inner, 0, pace)
		t.Cleanup(func() { _ = ln.Close() })
		lns = append(lns, ln)
	}
	start := time.Now()
	var wg sync.WaitGroup
	var taken atomic.Int32
	for _, ln := range lns {
		wg.Go(func() { acceptBurst(t, ln, perLn, &taken) })
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	elapsed := time.Since(start)
	beyond := waiting - pace.burst
	if want := time.Duration(beyond-1) * time.Second / rate; elapsed < want {
		t.Errorf("%d connections taken in %v at %d a second in bursts of %d, want at least %v", waiting, elapsed, rate, pace.burst, want)
	}
	// A token or two may come back while the burst is taken.
	if got := counterValue(t, paced); got < float64(beyond-4) || got > float64(beyond) {
		t.Errorf("%v connections counted as paced, want about %d", got, beyond)
	}
}

// A listener waiting for its turn returns as soon as it is closed, not
// when the turn comes.
func TestClosingAClientListenerEndsItsWaitForTheAcceptPace(t *testing.T) {
	inner := looptest.Listen(t)
	paced := prometheus.NewCounter(prometheus.CounterOpts{Name: "paced"})
	ln := listenClients(inner, 0, newAcceptPace(0.1, paced))
	dialBurst(t, inner.Addr().String(), 2)
	var taken atomic.Int32
	acceptBurst(t, ln, 1, &taken) // the burst's one token; the next is 10 s away
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	// Close only once Accept waits for its turn (it counts itself then).
	for deadline := time.Now().Add(5 * time.Second); counterValue(t, paced) < 1; {
		if time.Now().After(deadline) {
			t.Fatal("Accept did not begin to wait for its turn within 5 s")
		}
		time.Sleep(time.Millisecond) // a poll with a deadline
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting for its turn 5 s after the listener was closed")
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
