package broker

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

// newSendQueue returns a queue of at most max frames whose writers are
// started by start.
func newSendQueue(max int, start func()) *sendQueue {
	q := &sendQueue{}
	q.init(max, &queueLimits{perSession: 1 << 30, budget: 1 << 40}, start)
	return q
}

func TestQueueOverflowTurnsIntoASlowConsumerClose(t *testing.T) {
	q := newSendQueue(3, func() {})
	for i := range 3 {
		if r := q.push([]byte{byte(i)}, 1); r != pushed {
			t.Fatalf("push %d = %v", i, r)
		}
	}
	if r := q.push([]byte("x"), 1); r != overflow {
		t.Fatalf("push into a full queue = %v, want overflow", r)
	}
	if r := q.push([]byte("y"), 1); r != closed {
		t.Fatalf("push after overflow = %v, want closed", r)
	}
	frames, req, done := q.take()
	if done || len(frames) != 0 || req == nil || req.code != protocol.CloseSlowConsumer || req.flush {
		t.Fatalf("take = %d frames, %+v, done %v; want nothing to write and a 4008 close", len(frames), req, done)
	}
}

func TestKickKeepsQueuedFramesAndTheFirstCloseWins(t *testing.T) {
	starts := 0
	q := newSendQueue(10, func() { starts++ })
	q.push([]byte("a"), 1)
	if !q.close(closeReq{code: protocol.CloseKicked, reason: "bye", flush: true}) {
		t.Fatal("first close refused")
	}
	if q.close(closeReq{code: protocol.CloseGoingAway}) {
		t.Fatal("second close won")
	}
	if starts != 1 {
		t.Fatalf("%d writers started, want 1", starts)
	}
	frames, req, done := q.take()
	if done || len(frames) != 1 || req.code != protocol.CloseKicked {
		t.Fatalf("take = %q %+v, done %v", frames, req, done)
	}
	if _, _, done := q.take(); !done {
		t.Fatal("writer goes on after the close")
	}
}

func TestCloseOfAnIdleQueueStartsAWriter(t *testing.T) {
	starts := 0
	q := newSendQueue(10, func() { starts++ })
	q.close(closeReq{code: protocol.CloseKicked})
	if starts != 1 {
		t.Fatalf("%d writers started, want 1", starts)
	}
}

func TestWriterStartsOnPushAndEndsWhenDrained(t *testing.T) {
	starts := 0
	q := newSendQueue(10, func() { starts++ })
	q.push([]byte("a"), 1)
	q.push([]byte("b"), 1)
	if starts != 1 {
		t.Fatalf("%d writers started for two pushes, want 1", starts)
	}
	if frames, _, done := q.take(); done || len(frames) != 2 {
		t.Fatalf("take = %q, done %v", frames, done)
	}
	if _, _, done := q.take(); !done {
		t.Fatal("writer not told to end on an empty queue")
	}
	q.push([]byte("c"), 1)
	if starts != 2 {
		t.Fatalf("push to a drained queue started %d writers in all, want 2", starts)
	}
}

func TestNoWriterStartsAfterStop(t *testing.T) {
	starts := 0
	q := newSendQueue(10, func() { starts++ })
	q.stop()
	q.push([]byte("a"), 1)
	q.close(closeReq{code: protocol.CloseKicked})
	if starts != 0 {
		t.Fatalf("%d writers started after stop", starts)
	}
	if _, _, done := q.take(); !done {
		t.Fatal("take after stop hands out work")
	}
}

// TestWritersDeliverEveryFrameInOrderWithOneAtATime runs pushers against
// writers started on demand, as the client does, and checks that no frame
// is lost to a writer that ended just as it was pushed, that each pusher's
// frames are written in the order pushed, and that two writers never run
// at once.
func TestWritersDeliverEveryFrameInOrderWithOneAtATime(t *testing.T) {
	const pushers, perPusher = 8, 5000
	var (
		writers sync.WaitGroup
		running atomic.Int32
		started atomic.Int32
		next    [pushers]uint32 // written by one writer at a time
		total   atomic.Int64
		q       *sendQueue
	)
	q = newSendQueue(pushers*perPusher, func() {
		started.Add(1)
		writers.Add(1)
		go func() {
			defer writers.Done()
			if running.Add(1) != 1 {
				t.Error("two writers run at once")
			}
			defer running.Add(-1)
			for {
				frames, _, done := q.take()
				if done {
					return
				}
				for _, f := range frames {
					p, seq := f[0], binary.BigEndian.Uint32(f[1:])
					if seq != next[p] {
						t.Errorf("pusher %d: frame %d written after %d", p, seq, next[p]-1)
					}
					next[p] = seq + 1
				}
				total.Add(int64(len(frames)))
				q.recycle(frames)
			}
		}()
	})
	pushConcurrently(pushers, perPusher, func(_ int, f []byte) bool {
		if r := q.push(f, 1); r != pushed {
			t.Errorf("push = %v", r)
			return false
		}
		return true
	})
	writers.Wait() // the last writer ends only once it found the queue empty
	if n := total.Load(); n != pushers*perPusher {
		t.Fatalf("%d frames written, want %d", n, pushers*perPusher)
	}
	if q.len() != 0 {
		t.Fatalf("%d frames left with no writer", q.len())
	}
	t.Logf("%d writers started for %d frames", started.Load(), pushers*perPusher)
}

func TestQueueReusesSmallBatchesAndDropsLargeOnes(t *testing.T) {
	q := newSendQueue(1000, func() {})
	for range 10 {
		q.push([]byte("a"), 1)
	}
	frames, _, _ := q.take()
	q.recycle(frames)
	if cap(q.spare) == 0 {
		t.Fatal("small batch not kept for reuse")
	}
	for range 200 {
		q.push([]byte("a"), 1)
	}
	frames, _, _ = q.take()
	q.recycle(frames)
	if cap(q.spare) > 64 {
		t.Fatalf("kept a batch of capacity %d while idle", cap(q.spare))
	}
}

// TestDirectWritesAndWritersKeepOrderWithOneAtATime mixes the fan-out's
// inline writes (claim, write, unclaim) with pushes to writers started on
// demand. Some direct writes leave a tail that the next writer must send
// first. Each pusher's frames must be written in order, none lost, and a
// direct write and a writer must never write at once.
func TestDirectWritesAndWritersKeepOrderWithOneAtATime(t *testing.T) {
	const pushers, perPusher = 8, 5000
	var (
		writers sync.WaitGroup
		running atomic.Int32
		next    [pushers]uint32 // written by one writer at a time
		total   atomic.Int64
		tail    []byte // left by a direct write, sent first by the next writer
		q       *sendQueue
	)
	write := func(f []byte) {
		p, seq := f[0], binary.BigEndian.Uint32(f[1:])
		if seq != next[p] {
			t.Errorf("pusher %d: frame %d written after %d", p, seq, next[p]-1)
		}
		next[p] = seq + 1
		total.Add(1)
	}
	exclusive := func() func() {
		if running.Add(1) != 1 {
			t.Error("two writers write at once")
		}
		return func() { running.Add(-1) }
	}
	q = newSendQueue(pushers*perPusher, func() {
		writers.Add(1)
		go func() {
			defer writers.Done()
			// A writer writes only between a take that gave it frames
			// and its next take: once take reports done, a direct write
			// may claim the queue while this goroutine is still ending.
			if tail != nil {
				done := exclusive()
				write(tail)
				tail = nil
				done()
			}
			for {
				frames, _, stop := q.take()
				if stop {
					return
				}
				done := exclusive()
				for _, f := range frames {
					write(f)
				}
				done()
				q.recycle(frames)
			}
		}()
	})
	pushConcurrently(pushers, perPusher, func(i int, f []byte) bool {
		if q.claim() {
			done := exclusive()
			partial := i%7 == 0 // the socket took part of the frame
			if partial {
				tail = f
			} else {
				write(f)
			}
			done()
			q.unclaim(partial)
			return true
		}
		if r := q.push(f, 1); r != pushed {
			t.Errorf("push = %v", r)
			return false
		}
		return true
	})
	writers.Wait()
	if n := total.Load(); n != pushers*perPusher {
		t.Fatalf("%d frames written, want %d", n, pushers*perPusher)
	}
	if q.len() != 0 || tail != nil {
		t.Fatalf("%d frames and a tail of %d bytes left with no writer", q.len(), len(tail))
	}
}

func TestNoDirectWriteWhileClosingOrAfterStop(t *testing.T) {
	q := newSendQueue(10, func() {})
	q.close(closeReq{code: 4009, flush: true})
	if q.claim() {
		t.Fatal("claimed a closing queue")
	}
	q = newSendQueue(10, func() {})
	if !q.claim() {
		t.Fatal("an idle queue was not claimed")
	}
	q.stop()
	q.unclaim(true)
	if q.writer != writerStopped {
		t.Fatal("unclaim restarted a stopped queue")
	}
}

// pushConcurrently runs pushers goroutines that each hand perPusher frames
// to send, in order: a frame is the pusher's number and the frame's
// sequence number (big-endian uint32). A pusher stops when send returns
// false. It returns when every pusher is done.
func pushConcurrently(pushers, perPusher int, send func(seq int, f []byte) bool) {
	var pushing sync.WaitGroup
	for p := range pushers {
		pushing.Add(1)
		go func() {
			defer pushing.Done()
			for i := range perPusher {
				f := make([]byte, 5)
				f[0] = byte(p)
				binary.BigEndian.PutUint32(f[1:], uint32(i))
				if !send(i, f) {
					return
				}
			}
		}()
	}
	pushing.Wait()
}
