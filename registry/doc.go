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
//	P:service:{service}  set of the bkids registered to the service and not left
//	P:services           set of every service that ever registered (4004 vs 4503)
//	P:nonce:{nonce}      claim of one bk_connect by one node, so exactly one answer goes out
package registry
