package node

import (
	"net"
	"runtime"
	"sync/atomic"
	"testing"
)

// The client listener takes its turn among the goroutines: one that was
// ready before a burst of connections reached the accept loop runs once
// acceptTurn of them are taken, not after all of them. On one processor,
// without the yield, the loop takes the whole backlog in one time slice.
func TestClientListenerTakesItsTurnInABurst(t *testing.T) {
	const burst = 200
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	for range burst { // each waits in the kernel's backlog once Dial returns
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ln := &clientListener{Listener: inner}
	var taken atomic.Int32
	seen := make(chan int32, 1)
	go func() { seen <- taken.Load() }() // ready, waiting for the processor
	for range burst {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		taken.Add(1)
	}
	if got := <-seen; got > 2*acceptTurn {
		t.Errorf("a goroutine ready before the burst ran after %d of its %d connections were taken, want it to run within the first %d", got, burst, acceptTurn)
	}
}
