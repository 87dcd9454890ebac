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
//
// The writer exists only while there is something to write: the push (or
// close) that finds the queue idle starts it through start, and it ends when
// take finds nothing left. Both decisions are made under mu, so a frame is
// never left behind with no writer to send it, and at most one writer runs
// at a time, which keeps the frames in order. An idle client thus keeps no
// goroutine, and no stack, for its writes.
type sendQueue struct {
	// What claim reads comes first: mu, writer, closing, frames.
	mu      sync.Mutex // guards the fields below
	writer  writerState
	closing *closeReq
	frames  [][]byte
	spare   [][]byte // the writer's last batch, handed back for reuse
	max     int

	start func() // spawns a writer that calls take until it reports done
}

// writerState says whether a writer runs for the queue.
type writerState uint8

const (
	writerIdle    writerState = iota // nothing to write, no writer
	writerRunning                    // a writer runs, or has been started
	writerStopped                    // no writer runs or will ever start again
)

// init readies a zero queue to hold at most max frames, whose writers are
// started by start.
func (q *sendQueue) init(max int, start func()) {
	q.max, q.start = max, start
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
	defer q.mu.Unlock()
	switch {
	case q.closing != nil:
		return closed
	case len(q.frames) >= q.max:
		q.closing = &closeReq{code: protocol.CloseSlowConsumer, reason: "slow consumer"}
		q.frames = nil
		q.startLocked()
		return overflow
	}
	q.frames = append(q.frames, frame)
	q.startLocked()
	return pushed
}

// close asks the writer to close the client; the first request wins.
func (q *sendQueue) close(req closeReq) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closing != nil {
		return false
	}
	q.closing = &req
	if !req.flush {
		q.frames = nil
	}
	q.startLocked()
	return true
}

// startLocked starts a writer unless one runs. start is called with mu held
// (it only spawns the goroutine), so that stop, which takes mu, is ordered
// after it: whoever waits for the writers after stop cannot miss one.
func (q *sendQueue) startLocked() {
	if q.writer != writerIdle {
		return
	}
	q.writer = writerRunning
	q.start()
}

// claim makes the caller the client's writer for one write, if the queue is
// empty, not closing and no writer runs: it then writes without a
// goroutine, and must call release afterwards. Pushes and closes meanwhile
// find a writer running and only queue.
func (q *sendQueue) claim() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.writer != writerIdle || q.closing != nil || len(q.frames) > 0 {
		return false
	}
	q.writer = writerRunning
	return true
}

// release ends what claim began. A writer starts if the caller left
// something unsent (more), or if frames or a close came meanwhile.
func (q *sendQueue) release(more bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.writer != writerRunning {
		return // stopped meanwhile: the session is over
	}
	q.writer = writerIdle
	if more || q.closing != nil || len(q.frames) > 0 {
		q.startLocked()
	}
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

// take hands the writer everything queued, and the close request if any.
// With neither, done is true and the writer must end: the next push starts
// a new one. A close request is handed out once; after it, or after stop, no
// writer starts again.
func (q *sendQueue) take() (frames [][]byte, req *closeReq, done bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.writer == writerStopped:
		return nil, nil, true
	case q.closing != nil:
		frames, q.frames = q.frames, nil
		q.writer = writerStopped
		return frames, q.closing, false
	case len(q.frames) == 0:
		q.writer = writerIdle
		return nil, nil, true
	}
	frames = q.frames
	q.frames, q.spare = q.spare, nil
	return frames, nil, false
}

// stop makes sure that no writer starts from now on. The writer that fails
// to write calls it, and so does the session when it ends.
func (q *sendQueue) stop() {
	q.mu.Lock()
	q.writer = writerStopped
	q.mu.Unlock()
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
