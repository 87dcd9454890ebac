// Package broker owns the browsers' side of DMB: the WebSocket endpoint
// /ws/{service}, one session per client with its own bounded send queue
// drained by its own writer goroutine (which runs only while something is
// queued, so an idle client costs one goroutine), the index of clients by
// cid and by service, and the fan-out that the downlink calls (Broadcast,
// Direct, Kick). It decides who may connect (origin, service known, a live
// backend) and closes clients with the contract's codes.
//
// Fan-out never waits on a client: a frame is encoded once by the caller and
// the same bytes are queued to every client; a client whose queue is full is
// closed with 4008 and everyone else goes on. A writer that finds several
// frames queued writes them to the socket in one write (see wire.go).
//
// What clients send goes to the uplink, which owns backends' bindings; the
// broker does not talk to Redis.
package broker
