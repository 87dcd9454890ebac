// Package broker owns the browsers' side of DMB: the WebSocket endpoint
// /ws/{service}, one session per client with its own bounded send queue and
// one writer at a time (which runs only while something is queued, so an
// idle client costs one goroutine), the index of clients by cid and by
// service, and the fan-out that the downlink calls (Broadcast, Direct,
// Kick). It decides who may connect (origin, service known, a live
// backend) and closes clients with the contract's codes.
//
// Fan-out never waits on a client: a frame is encoded once by the caller,
// framed for the wire once (internal/wsframe), and the same bytes go to every
// client: written to the socket at once when the client has nothing queued
// and the socket takes them without waiting, queued otherwise. A client
// whose queue is full is closed with 4008 and everyone else goes on.
// Queued frames are written by a few flushers shared by all clients
// (flush.go), several in one write, and by a writer goroutine of the
// client's own only while its socket makes it wait or it is being closed
// (client.go, wire.go). One watchdog bounds every socket write by the
// write timeout (watchdog.go).
//
// What clients send goes to the uplink, which owns backends' bindings; the
// broker does not talk to Redis.
package broker
