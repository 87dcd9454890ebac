package broker

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dmb-broker/dmb/protocol"
)

// closeReq is a close that DMB asked for.
type closeReq struct {
	code   int
	reason string
	flush  bool // write what is queued before the close frame
}

// sendQueue holds the frames waiting for one client's writer. It is bounded
// in frames and in bytes, and the node's queues together by a budget: a
// push that finds it full turns into a close with 4008, so a slow client
// never makes the pusher wait and never holds more than its share.
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
	bytes   int      // the length of the frames queued and being written, added up
	charged int      // what of the budget those frames take (see push)
	spare   [][]byte // the writer's last batch, handed back for reuse
	max     int      // frames
	lim     *queueLimits

	start func() // spawns a writer that calls take until it reports done
}

// queueLimits bound the bytes of every session's queue of a broker.
type queueLimits struct {
	perSession int   // bytes one queue may hold
	budget     int64 // bytes the node's queues may hold together
	// queued is what the queues take of the budget, added up; sessions
	// how many sessions share it.
	queued   atomic.Int64
	sessions atomic.Int64
}

// admit charges n bytes to the budget for a queue that was charged own;
// false when the node's queues would take more than the budget and this
// queue more than its share of it. One atomic add a push.
func (l *queueLimits) admit(own, n int) bool {
	if l.queued.Add(int64(n)) <= l.budget {
		return true
	}
	if int64(own+n) <= l.budget/max(l.sessions.Load(), 1) {
		return true
	}
	l.queued.Add(-int64(n))
	return false
}

// frameOverhead is what a queued frame costs besides its bytes: its entry
// in the queue.
const frameOverhead = 24

// writerState says whether a writer runs for the queue.
type writerState uint8

const (
	writerIdle    writerState = iota // nothing to write, no writer
	writerRunning                    // a writer runs, or has been started
	writerStopped                    // no writer runs or will ever start again
)

// init readies a zero queue to hold at most max frames within lim, whose
// writers are started by start.
func (q *sendQueue) init(max int, lim *queueLimits, start func()) {
	q.max, q.lim, q.start = max, lim, start
}

// pushResult says what became of a pushed frame.
type pushResult uint8

const (
	pushed        pushResult = iota
	closed                   // the client is closing; the frame is dropped
	overflow                 // the queue held its most frames: the client is now closing with 4008
	overflowBytes            // the queue held its most bytes: likewise
	overBudget               // the node's queues held their budget, this one more than its share: likewise
)

// push queues frame, which sharers sessions share (1 for a frame of this
// session's own). The queue's bound counts the whole frame, which it keeps
// in memory however many others let go of it; the node's budget counts a
// shared frame once in all, a share of it for each session, since its
// bytes are held once. A frame larger than the queue's bound goes into an
// empty queue all the same: the payload limits keep such frames rare.
func (q *sendQueue) push(frame []byte, sharers int) pushResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	charge := len(frame)/max(sharers, 1) + frameOverhead
	r := pushed
	switch {
	case q.closing != nil:
		return closed
	case len(q.frames) >= q.max:
		r = overflow
	case q.bytes+len(frame) > q.lim.perSession && q.bytes > 0:
		r = overflowBytes
	case !q.lim.admit(q.charged, charge):
		r = overBudget
	}
	if r != pushed {
		q.closing = &closeReq{code: protocol.CloseSlowConsumer, reason: "slow consumer"}
		q.dropLocked()
		q.startLocked()
		return r
	}
	q.frames = append(q.frames, frame)
	q.bytes += len(frame)
	q.charged += charge
	q.startLocked()
	return pushed
}

// dropLocked empties the queue and gives its bytes back to the budget.
// Lock must be held.
func (q *sendQueue) dropLocked() {
	q.frames = nil
	q.releaseLocked()
}

// releaseLocked gives all the queue's bytes back to the budget: its frames
// were taken for the last time or dropped. Lock must be held.
func (q *sendQueue) releaseLocked() {
	q.lim.queued.Add(-int64(q.charged))
	q.bytes, q.charged = 0, 0
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
		q.dropLocked()
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
// goroutine, and must call unclaim afterwards. Pushes and closes meanwhile
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

// unclaim ends what claim began. A writer starts if the caller left
// something unsent (more), or if frames or a close came meanwhile.
func (q *sendQueue) unclaim(more bool) {
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
		q.releaseLocked()
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

// putBack returns frames that the writer took and did not write to the
// head of the queue, before what came since; the writer goes on running.
func (q *sendQueue) putBack(frames [][]byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.writer == writerStopped { // dropped already
		return
	}
	q.frames = slices.Concat(frames, q.frames)
}

// stop makes sure that no writer starts from now on, and drops what is
// queued. The writer that fails to write calls it, and so does the session
// when it ends.
func (q *sendQueue) stop() {
	q.mu.Lock()
	q.writer = writerStopped
	q.dropLocked()
	q.mu.Unlock()
}

// release gives back the bytes of frames that the writer took and wrote
// (or handed to the transport).
func (q *sendQueue) release(frames [][]byte) {
	q.mu.Lock()
	q.releaseFramesLocked(frames)
	q.mu.Unlock()
}

func (q *sendQueue) releaseFramesLocked(frames [][]byte) {
	if q.writer == writerStopped { // the bytes were given back already
		return
	}
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	if n >= q.bytes {
		q.releaseLocked()
		return
	}
	// The charges of single frames are not kept: n bytes give back their
	// part of the charge, and an empty queue all that is left of it.
	c := int(int64(q.charged) * int64(n) / int64(q.bytes))
	q.bytes -= n
	q.charged -= c
	q.lim.queued.Add(-int64(c))
}

// recycle is release, and takes the batch back for reuse unless it grew
// large: an idle client should not keep a burst's worth of slice.
func (q *sendQueue) recycle(frames [][]byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.releaseFramesLocked(frames)
	if cap(frames) > 64 {
		return
	}
	clear(frames)
	if q.spare == nil {
		q.spare = frames[:0]
	}
}
