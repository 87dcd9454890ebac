package broker

import "time"

// Transport carries one session's frames to its client. A session writes
// only through it and never learns which transport it has: the WebSocket
// (internal/wsconn) is one. The handler that accepts a connection makes
// the transport and the session, and runs the reads.
//
// One writer at a time calls the write methods (the session's send queue
// sees to that); Close and CloseNow may come from any goroutine.
type Transport interface {
	// WriteMany writes frames in order, after what a write that could not
	// wait left; it may wait for the client, as long as the write timeout
	// allows.
	WriteMany(frames [][]byte) error
	// Flush sends what a write that could not wait left, if anything.
	Flush() error
	// Close ends the connection with code and reason after what was
	// written, and may wait briefly for the client to acknowledge it.
	Close(code int, reason string) error
	// CloseNow drops the connection; a write in progress fails.
	CloseNow() error
	// DropIfStalled drops the connection if a write has been in progress
	// for longer than write, or a frame from the client has been arriving
	// for longer than frame, so that the write or the read fails; true if
	// it did. The broker's watchdog calls it many times per timeout, with
	// the session's own timeouts (lengthened by its share, see
	// internal/spread).
	DropIfStalled(now time.Time, write, frame time.Duration) bool
}

// InlineWriter writes to a transport's client without ever waiting, when
// the transport can. The fan-out writes to such a client at once when its
// queue is empty, and the broker's flushers write its queued frames, so
// that a client costs no goroutine of its own unless its socket makes it
// wait. Whether a session has one is decided once, when it is made. It is
// an interface of its own, not a part of Transport, so that the fan-out
// reaches the socket's state with no other object between: at a few
// broadcasts a second little of a client's memory is in the cache, and
// each object on the way costs a miss.
type InlineWriter interface {
	// TryWrite writes frame, in the form the fan-out prepares it
	// (prepared.wire), if the client takes it without waiting. took is
	// false when nothing was written; tail is true when part of it waits to
	// be sent (by Flush or the next write).
	TryWrite(frame []byte) (took, tail bool)
	// TryWriteMany writes frames as WriteMany does, without waiting. took
	// is false, with nothing taken, when another write holds the
	// connection; tail is true when part waits to be sent.
	TryWriteMany(frames [][]byte) (took, tail bool)
	// Pending tells whether part of a write may wait to be sent.
	Pending() bool
	// Warm reads the state a TryWrite reaches first, so that a fan-out can
	// load many clients' memory at once before it writes to them; what it
	// returns means nothing.
	Warm() int
}
