// Package uplink carries what clients say to their backends: it publishes
// client_connected, message and client_disconnected on the uplink channel of
// the backend each client is bound to, answers each client frame that had
// an id with dmb:ack or dmb:error, and publishes the node's own events for
// backends (bk_message_ack, error).
//
// Clients are split over a few workers by cid. A worker owns the bindings of
// its clients (which backend each is bound to, and whether that backend has
// had client_connected) and publishes what it has queued in Redis
// pipelines, so a client's frames reach its backend in the order sent. A
// client's message may pass other clients' connects and disconnects queued
// before it, which a pipeline takes a few at a time (pick), never a request
// of its own client. A
// PUBLISH that reaches nobody means the backend is gone: the worker tells the
// registry, binds the client to another live backend, sends that backend
// client_connected, then the frame. The uplink does not accept sockets or
// decide who may connect; that is the broker's.
package uplink
