package broker

import (
	"sync"

	"github.com/dmb-broker/dmb/protocol"
)

// closeReq is a close that DMB asked for.
type closeReq struct {
	code   int
	reason string
	flush  bool // write what is queued before the close frame
}

// sendQueue holds the frames waiting for one client's writer. It is bounded:
// a push that finds it full turns into a close with 4008, so a slow client
// never makes the pusher wait.
type sendQueue struct {
	mu      sync.Mutex // guards the fields below
	frames  [][]byte
	spare   [][]byte // the writer's last batch, handed back for reuse
	closing *closeReq
	max     int

	wake chan struct{} // one pending wake-up for the writer
}

func newSendQueue(max int) *sendQueue {
	return &sendQueue{max: max, wake: make(chan struct{}, 1)}
}

// pushResult says what became of a pushed frame.
type pushResult uint8

const (
	pushed   pushResult = iota
	closed              // the client is closing; the frame is dropped
	overflow            // the queue was full: the client is now closing with 4008
)

func (q *sendQueue) push(frame []byte) pushResult {
	q.mu.Lock()
	switch {
	case q.closing != nil:
		q.mu.Unlock()
		return closed
	case len(q.frames) >= q.max:
		q.closing = &closeReq{code: protocol.CloseSlowConsumer, reason: "slow consumer"}
		q.frames = nil
		q.mu.Unlock()
		q.signal()
		return overflow
	}
	q.frames = append(q.frames, frame)
	q.mu.Unlock()
	q.signal()
	return pushed
}

// close asks the writer to close the client; the first request wins.
func (q *sendQueue) close(req closeReq) bool {
	q.mu.Lock()
	first := q.closing == nil
	if first {
		q.closing = &req
		if !req.flush {
			q.frames = nil
		}
	}
	q.mu.Unlock()
	q.signal()
	return first
}

// len returns how many frames are waiting.
func (q *sendQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.frames)
}

// closeRequest returns the close DMB asked for, or nil.
func (q *sendQueue) closeRequest() *closeReq {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closing
}

func (q *sendQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take hands the writer everything queued, and the close request if any.
func (q *sendQueue) take() ([][]byte, *closeReq) {
	q.mu.Lock()
	defer q.mu.Unlock()
	frames := q.frames
	q.frames = q.spare
	q.spare = nil
	return frames, q.closing
}

// recycle gives a written batch back for reuse, unless it grew large: an
// idle client should not keep a burst's worth of slice.
func (q *sendQueue) recycle(frames [][]byte) {
	if cap(frames) > 64 {
		return
	}
	clear(frames)
	q.mu.Lock()
	if q.spare == nil {
		q.spare = frames[:0]
	}
	q.mu.Unlock()
}
