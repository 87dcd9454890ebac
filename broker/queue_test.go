package broker

import (
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

func TestQueueOverflowTurnsIntoASlowConsumerClose(t *testing.T) {
	q := newSendQueue(3)
	for i := range 3 {
		if r := q.push([]byte{byte(i)}); r != pushed {
			t.Fatalf("push %d = %v", i, r)
		}
	}
	if r := q.push([]byte("x")); r != overflow {
		t.Fatalf("push into a full queue = %v, want overflow", r)
	}
	if r := q.push([]byte("y")); r != closed {
		t.Fatalf("push after overflow = %v, want closed", r)
	}
	frames, req := q.take()
	if len(frames) != 0 || req == nil || req.code != protocol.CloseSlowConsumer || req.flush {
		t.Fatalf("take = %d frames, %+v; want nothing to write and a 4008 close", len(frames), req)
	}
}

func TestKickKeepsQueuedFramesAndTheFirstCloseWins(t *testing.T) {
	q := newSendQueue(10)
	q.push([]byte("a"))
	if !q.close(closeReq{code: protocol.CloseKicked, reason: "bye", flush: true}) {
		t.Fatal("first close refused")
	}
	if q.close(closeReq{code: protocol.CloseGoingAway}) {
		t.Fatal("second close won")
	}
	frames, req := q.take()
	if len(frames) != 1 || req.code != protocol.CloseKicked {
		t.Fatalf("take = %q %+v", frames, req)
	}
	select {
	case <-q.wake:
	default:
		t.Fatal("writer not woken")
	}
}

func TestQueueReusesSmallBatchesAndDropsLargeOnes(t *testing.T) {
	q := newSendQueue(1000)
	for range 10 {
		q.push([]byte("a"))
	}
	frames, _ := q.take()
	q.recycle(frames)
	if cap(q.spare) == 0 {
		t.Fatal("small batch not kept for reuse")
	}
	for range 200 {
		q.push([]byte("a"))
	}
	frames, _ = q.take()
	q.recycle(frames)
	if cap(q.spare) > 64 {
		t.Fatalf("kept a batch of capacity %d while idle", cap(q.spare))
	}
}
