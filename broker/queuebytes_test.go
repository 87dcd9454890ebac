package broker

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/protocol"
)

func TestAQueueOverItsBytesTurnsIntoASlowConsumerClose(t *testing.T) {
	lim := &queueLimits{perSession: 100, budget: 1 << 40}
	q := &sendQueue{}
	q.init(1000, lim, func() {})
	if r := q.push(make([]byte, 60), 1); r != pushed {
		t.Fatalf("push = %v", r)
	}
	if r := q.push(make([]byte, 60), 1); r != overflowBytes {
		t.Fatalf("push over the bytes = %v, want overflowBytes", r)
	}
	if req := q.closeRequest(); req == nil || req.code != protocol.CloseSlowConsumer {
		t.Fatalf("close request %+v, want 4008", req)
	}
	if n := lim.queued.Load(); n != 0 {
		t.Fatalf("the budget still holds %d bytes of a dropped queue", n)
	}
	// A frame larger than the bound goes into an empty queue.
	q = &sendQueue{}
	q.init(1000, lim, func() {})
	if r := q.push(make([]byte, 500), 1); r != pushed {
		t.Fatalf("a large frame into an empty queue = %v", r)
	}
}

func TestTheBudgetClosesOnlyTheQueuesOverTheirShare(t *testing.T) {
	lim := &queueLimits{perSession: 1 << 30, budget: 400}
	lim.sessions.Store(2) // a share is 200
	heavy, light := &sendQueue{}, &sendQueue{}
	heavy.init(1000, lim, func() {})
	light.init(1000, lim, func() {})
	for range 4 {
		if r := heavy.push(make([]byte, 76), 1); r != pushed { // 100 with the overhead
			t.Fatalf("push under the budget = %v", r)
		}
	}
	// The budget is spent; the light queue is within its share.
	if r := light.push(make([]byte, 76), 1); r != pushed {
		t.Fatalf("a queue within its share = %v, want pushed", r)
	}
	if r := heavy.push(make([]byte, 76), 1); r != overBudget {
		t.Fatalf("a queue over its share of a spent budget = %v, want overBudget", r)
	}
	if n := lim.queued.Load(); n != 100 {
		t.Fatalf("the budget holds %d bytes, want the light queue's 100", n)
	}
}

func TestASharedFrameIsChargedToTheBudgetOnce(t *testing.T) {
	lim := &queueLimits{perSession: 1 << 30, budget: 1 << 40}
	frame := make([]byte, 10000)
	queues := make([]*sendQueue, 10)
	for i := range queues {
		queues[i] = &sendQueue{}
		queues[i].init(1000, lim, func() {})
		queues[i].push(frame, len(queues))
	}
	if n, want := lim.queued.Load(), int64(len(frame)+len(queues)*frameOverhead); n != want {
		t.Fatalf("the budget holds %d bytes for a frame shared by %d queues, want %d", n, len(queues), want)
	}
	// Taken and written, or dropped, the bytes come back.
	for i, q := range queues {
		if i%2 == 0 {
			frames, _, _ := q.take()
			q.recycle(frames)
		} else {
			q.stop()
		}
	}
	if n := lim.queued.Load(); n != 0 {
		t.Fatalf("the budget holds %d bytes after every queue let go", n)
	}
}

// recordingTransport is a transport and its inline writer, which takes every write and
// records how many bytes each non-waiting batch write was handed.
type recordingTransport struct {
	batches []int
}

func (r *recordingTransport) WriteMany([][]byte) error { return nil }
func (r *recordingTransport) Flush() error             { return nil }
func (r *recordingTransport) Close(int, string) error  { return nil }
func (r *recordingTransport) CloseNow() error          { return nil }
func (r *recordingTransport) DropIfStalled(time.Time, time.Duration, time.Duration) bool {
	return false
}
func (r *recordingTransport) TryWrite([]byte) (bool, bool) { return true, false }
func (r *recordingTransport) Pending() bool                { return false }
func (r *recordingTransport) Warm() int                    { return 0 }
func (r *recordingTransport) TryWriteMany(frames [][]byte) (bool, bool) {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	r.batches = append(r.batches, n)
	return true, false
}

// A flusher hands the transport what is queued a chunk at a time: the
// transport frames (copies) what it is handed, and a client should cost
// one chunk of copies, not its whole queue.
func TestAFlusherWritesAQueueAChunkAtATime(t *testing.T) {
	brk := New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) {
		c.SendQueue = 1000
		c.WriteTimeout = time.Second
	}))
	tr := &recordingTransport{}
	s := newSession(brk, tr, tr, "chat", "127.0.0.1", identity{})
	frame := bytes.Repeat([]byte("x"), 30000)
	var frames [][]byte
	for range 100 {
		frames = append(frames, frame)
	}
	budget := len(frames) * len(frame)
	if rest, waited := s.writeInline(frames, &budget); waited || rest != nil {
		t.Fatal("a transport that takes everything did not get everything")
	}
	total := 0
	for _, n := range tr.batches {
		total += n
		if n > inlineChunk+len(frame) {
			t.Fatalf("a batch of %d bytes, more than a chunk (%d) and a frame", n, inlineChunk)
		}
	}
	if total != 100*len(frame) {
		t.Fatalf("%d bytes written, want %d", total, 100*len(frame))
	}
}

func TestAClientThatDoesNotReadIsClosedWhenItsQueueHoldsItsBytes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	up := disconnects{make(chan int, 1)}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.SendQueueBytes = 1 << 20
		c.WriteTimeout = time.Minute
	})))
	dialBroker(t, ctx, brk)
	// The client never reads: the socket's buffers fill, then the queue,
	// far below its 4096 frames.
	big := bytes.Repeat([]byte("x"), 60000)
	for i := 0; ; i++ {
		if brk.Broadcast("chat", big, nil) == 0 {
			break
		}
		if i > 2000 {
			t.Fatal("2000 broadcasts of 60 kB queued to a client that does not read")
		}
	}
	select {
	case code := <-up.codes:
		if code != protocol.CloseSlowConsumer {
			t.Fatalf("session ended with %d, want 4008", code)
		}
	case <-ctx.Done():
		t.Fatal("the client was not closed")
	}
	waitFor(t, ctx, func() bool { return brk.QueuedBytes() == 0 })
}
