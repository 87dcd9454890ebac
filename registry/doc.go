// Package registry owns the backends: it answers bk_connect and
// bk_disconnect on the register channel, assigns bkids from a counter in
// Redis, keeps the registry state in Redis so that no node restart loses a
// backend, and keeps each node's view of which backends are live.
//
// A backend is live while some Redis connection is subscribed to its uplink
// channel; the view is refreshed with PUBSUB NUMSUB every half
// DMB_BACKEND_TIMEOUT, at once when a publish finds nobody listening
// (MarkDead), and on demand when a client asks for a service that has no
// live backend in the view. The registry does not know clients: it tells
// its owner which services changed, and the uplink moves clients.
//
// Keys, under the prefix P:
//
//	P:bkid               counter; seeded from the Redis clock so that a Redis that lost its data never reissues a bkid
//	P:backend:{bkid}     hash: service
//	P:service:{service}  set of the bkids registered to the service and not dropped
//	P:services           set of the services registered within DMB_BACKEND_RETENTION (4004 vs 4503), at most DMB_MAX_SERVICES
//	P:nonce:{nonce}      claim of one bk_connect by one node, so exactly one answer goes out
//	P:left:{bkid}        claim of one bk_disconnect's bk_disconnected notice by one node
//
// What peers can make it do is bounded: a flood of bk_connect for new
// services adds at most DMB_MAX_SERVICES services, each gone one retention
// period after its last backend was live (prune.go); a forged bk_disconnect
// lasts until the next liveness check (leave.go); look-ups of bkids that
// DMB never issued are cached and limited to DMB_BKID_LOOKUP_RATE a second
// (bkids.go).
package registry
