package broker

import (
	"log/slog"
	"runtime/debug"
)

// A session's writes are made by one writer at a time, which exists only
// while its send queue holds something (see sendQueue). A writer starts as
// a turn on one of the broker's flushers when the transport can write
// without waiting, and goes on as a goroutine of the session's own only
// when the client makes it wait or the session closes (the close handshake
// waits). A few flushers serve every client whose socket takes what is
// queued at once: a goroutine per client and per wake-up, with its stack to
// grow and its scheduling, cost more than a fifth of a broadcast's CPU when
// each client has one frame to write.

// startWriter starts a writer; the send queue calls it, with its lock held,
// when a frame or a close request finds no writer running.
func (s *session) startWriter() {
	s.writers.Add(1)
	if s.inline != nil && s.b.flushLater(s) {
		return
	}
	s.goWrite(nil, nil)
}

// flushLater hands s's writer to a flusher; false if none can take it now.
// The send queue's lock is held: it never waits.
func (b *Broker) flushLater(s *session) bool {
	b.flushMu.RLock()
	defer b.flushMu.RUnlock()
	if !b.flushersOn {
		return false
	}
	select {
	case b.ready <- s:
		return true
	default:
		return false
	}
}

// flush runs the writers of the sessions handed to it, one after the
// other, until Run closes the list.
func (b *Broker) flush(ready <-chan *session) {
	for s := range ready {
		s.flushReady()
	}
}

// flushReady is a writer's turn on a flusher: it writes what is queued
// without ever waiting for the client. When the transport does not take
// everything, or the session closes, the rest goes to a writer goroutine of
// the session's own.
func (s *session) flushReady() {
	handedOver := false
	defer func() {
		if !handedOver {
			s.writers.Done()
		}
	}()
	defer s.recoverWriter()
	// A write that the client took only part of started this writer
	// (unclaim(true)) with nothing queued: its tail goes first.
	if s.inline.Pending() {
		if took, tail := s.inline.TryWriteMany(nil); !took || tail {
			handedOver = true
			s.goWrite(nil, nil) // writeLoop sends the tail first
			return
		}
	}
	for budget := flushTurn; ; {
		frames, req, done := s.q.take()
		switch {
		case done:
			return
		case req != nil:
			handedOver = true
			s.goWrite(frames, req)
			return
		}
		s.b.m.WriteBatch.Observe(float64(len(frames)))
		rest, waited := s.writeInline(frames, &budget)
		switch {
		case waited:
			// The client made the write wait, or another write holds the
			// connection (the library answering a ping or a close to a
			// full socket): the rest, after the tail, goes on a goroutine
			// of the session's own, not on the flusher.
			handedOver = true
			s.goWrite(rest, nil)
			return
		case len(rest) > 0:
			// The turn is over: the rest goes back to the head of the
			// queue, and the session to the end of the flushers' line.
			s.q.putBack(rest)
			handedOver = true
			if !s.b.flushLater(s) {
				s.goWrite(nil, nil)
			}
			return
		}
		s.q.recycle(frames)
	}
}

// flushTurn is about how many bytes a session's turn on a flusher writes.
// The flushers serve their sessions in line: a turn as long as a client's
// kernel buffer (2 MiB, see DMB_CLIENT_SEND_BUFFER) made every session
// behind a hundred clients that never read wait 100 to 400 ms, honest
// clients' acks with them (docs/limits.md). A turn of one chunk keeps the
// line moving.
const flushTurn = inlineChunk

// inlineChunk is about how many bytes writeInline hands the transport at a
// time: the transport copies what it frames, and a slow client should hold
// one chunk of copies, not its whole queue.
const inlineChunk = 64 << 10

// writeInline writes frames through the inline transport a chunk at a
// time, without waiting, while budget (bytes) lasts; what it writes comes
// off budget, and a chunk is written whenever budget is left. The bytes of
// what it wrote are given back to the queue, and rest is what is left to
// write: after the tail when waited, when the client made a write wait;
// otherwise what the budget did not reach (nil when it wrote everything).
func (s *session) writeInline(frames [][]byte, budget *int) (rest [][]byte, waited bool) {
	for start := 0; start < len(frames); {
		if *budget <= 0 {
			s.q.release(frames[:start])
			return frames[start:], false
		}
		end, size := start, 0
		for end < len(frames) && (end == start || size < inlineChunk) {
			size += len(frames[end])
			end++
		}
		took, tail := s.inline.TryWriteMany(frames[start:end])
		switch {
		case !took:
			s.q.release(frames[:start])
			return frames[start:], true
		case tail:
			s.q.release(frames[:end])
			return frames[end:], true
		}
		*budget -= size
		start = end
	}
	return nil, false
}

// goWrite runs the rest of a writer on a goroutine of its own: frames and
// req, taken from the queue already, then writeLoop.
func (s *session) goWrite(frames [][]byte, req *closeReq) {
	go func() {
		defer s.writers.Done()
		defer s.recoverWriter()
		if s.writeTaken(frames, req) {
			s.writeLoop()
		}
	}()
}

// writeLoop writes queued frames until the queue is empty, the connection
// fails, or the session closes.
func (s *session) writeLoop() {
	// What a write that could not wait left goes first.
	if err := s.t.Flush(); err != nil {
		s.writeFailed(err)
		return
	}
	for {
		frames, req, done := s.q.take()
		if done || !s.writeTaken(frames, req) {
			return
		}
	}
}

// writeTaken writes frames taken from the queue, then closes the
// connection if req asks for it; true if the writer goes on.
func (s *session) writeTaken(frames [][]byte, req *closeReq) bool {
	if len(frames) > 0 {
		s.b.m.WriteBatch.Observe(float64(len(frames)))
		if err := s.t.WriteMany(frames); err != nil {
			s.writeFailed(err)
			return false
		}
		s.q.recycle(frames)
	}
	if req != nil {
		// The reader sees the end and finishes the session.
		_ = s.t.Close(req.code, req.reason)
		return false
	}
	return true
}

// writeFailed ends the session's writes after a failed one: the reader
// then finds the connection closed.
func (s *session) writeFailed(err error) {
	s.log(slog.LevelDebug, "write failed", "err", err)
	s.q.stop()
	_ = s.t.CloseNow()
}

// recoverWriter turns a panic in a writer into the end of the session's
// connection, not of the node.
func (s *session) recoverWriter() {
	if p := recover(); p != nil {
		s.log(slog.LevelError, "panic in client writer", "panic", p, "stack", string(debug.Stack()))
		s.q.stop()
		_ = s.t.CloseNow()
	}
}
