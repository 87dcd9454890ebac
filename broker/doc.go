// Package broker owns the clients' side of DMB: their sessions, each with
// its own bounded send queue and one writer at a time, the index of
// sessions by cid, by service, by user and by room, and the fan-out that
// the downlink calls (Broadcast, Direct, DirectUser, Kick, Join, Leave,
// Room, Presence). It decides who may
// connect (admission) and closes clients with the contract's codes. What
// clients send goes to the uplink, which owns backends' bindings; the
// broker does not talk to Redis.
//
// A session writes only through its Transport and never learns which one
// carries it. The WebSocket endpoint (websocket.go, on internal/wsconn) is
// today's transport; a transport that can write without waiting
// (InlineWriter) lets the fan-out write a frame at once to a client
// with nothing queued, and the broker's flushers write what is queued.
//
// Fan-out never waits on a client: a frame is encoded once by the caller,
// prepared for the wire once, and the same bytes go to every session. A
// session whose queue is full is closed with 4008 and everyone else goes
// on.
//
// # Files
//
//	broker.go     Broker, its Config, the interfaces it needs, Run
//	transport.go  Transport and InlineWriter: what a session writes through
//	websocket.go  the WebSocket endpoint: accept, admit, read frames
//	admission.go  who may connect: origin, service, token, live backend; cids
//	limits.go     clients per node and address, handshakes a second
//	session.go    one client's session: identity, handling its frames, its end
//	queue.go      a session's bounded send queue, and who its writer is
//	writer.go     a session's writer, and the flushers that run writers
//	fanout.go     Broadcast, Direct, DirectUser: one frame to many sessions
//	index.go      sessions by cid, service and user; Kick and Close
//	rooms.go      rooms of this node's clients: Join, Leave, Room, Presence
//	watchdog.go   the bound on every write
//	shutdown.go   Shutdown
//	stats.go      the operator's snapshot
//
// # Lock order
//
// Locks are taken in this order, never the other way; a function that
// expects a lock held says so.
//
//	Broker.mu (the index; read-held by a fan-out across its writes, and
//	  across the yields that give the other goroutines their turn)
//	  -> sendQueue.mu (a session's queue; never held across a write)
//	       -> Broker.flushMu (read-held to hand a writer to a flusher)
//	  -> the transport's locks (internal/wsconn documents its own)
//
//	session.fwdMu (passing a frame to the uplink) -> the uplink's queue:
//	  held across an enqueue that may wait for room, at most until the
//	  broker's ctx ends, which Shutdown cancels at its deadline.
//
// The goroutines: one per session (the transport's reader; its end is the
// session's end), a writer goroutine per session only while its client
// makes it wait, and the flushers and the watchdog, which Run owns.
// Shutdown waits for every session.
package broker
