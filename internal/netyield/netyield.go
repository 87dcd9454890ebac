// Package netyield lets a long run of work give the goroutines that the
// network has woken their turn.
//
// Go's scheduler looks for goroutines that the network has made ready
// (a socket with something to read) only when a processor runs out of
// other work, or every 10 ms from its monitor. A goroutine that yields
// with runtime.Gosched goes back to the run queue, so the queue is never
// empty: on a processor kept busy, a client's frame can wait up to 10 ms
// before the goroutine that reads it runs (golang/go#51651). Yield instead
// parks the goroutine until a pipe that it has just written to is found
// ready by that same look at the network, which readies every other
// socket found ready with it.
package netyield

import (
	"fmt"
	"os"
	"runtime"
	"sync"
)

// Yielder hands out turns through a pipe. A nil Yielder yields with
// runtime.Gosched.
type Yielder struct {
	r, w  *os.File
	turns chan struct{}
	done  chan struct{}
	once  sync.Once
	err   error // Close's
}

// Start starts a Yielder's goroutine; Close stops it.
func Start() (*Yielder, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("netyield: pipe: %w", err)
	}
	y := &Yielder{r: r, w: w, turns: make(chan struct{}), done: make(chan struct{})}
	go y.run()
	return y, nil
}

var one = []byte{1}

// Yield lets the goroutines that are ready to run, and those that the
// network has made ready, run before the caller goes on.
func (y *Yielder) Yield() {
	if y == nil {
		runtime.Gosched()
		return
	}
	if _, err := y.w.Write(one); err != nil { // closed
		runtime.Gosched()
		return
	}
	<-y.turns
}

// run gives a turn for each byte written to the pipe, until it is closed.
func (y *Yielder) run() {
	defer close(y.done)
	buf := make([]byte, 512)
	for {
		n, err := y.r.Read(buf)
		if n > 0 {
			// What the same look at the network readied runs first.
			runtime.Gosched()
		}
		for range n {
			y.turns <- struct{}{}
		}
		if err != nil {
			return
		}
	}
}

// Close stops the Yielder once the turns asked for are given; Yield then
// falls back to runtime.Gosched.
func (y *Yielder) Close() error {
	if y == nil {
		return nil
	}
	y.once.Do(func() {
		_ = y.w.Close()
		<-y.done
		y.err = y.r.Close()
	})
	return y.err
}
