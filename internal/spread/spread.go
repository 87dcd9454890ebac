// Package spread lengthens each connection's timeouts by a share of its
// own, so that connections that began together do not all time out
// together.
//
// An attacker opens a thousand connections at once and lets each stall: a
// request that never ends, a frame never finished. Cut after the same
// timeout, they all end in the same instant, and all come back in the
// next, and a node's core spends that instant on a thousand closes and
// handshakes while its other clients' frames wait. Lengthened by a random
// share of up to a quarter, the same cuts are spread over a quarter of the
// timeout.
package spread

import (
	"math/rand/v2"
	"time"
)

// A Share is how much a connection's timeouts are lengthened: from none to
// a quarter of each, drawn once for the connection.
type Share uint8

// New draws a connection's share.
func New() Share { return Share(rand.N(256)) }

// Of returns d lengthened by the share.
func (s Share) Of(d time.Duration) time.Duration { return d + d*time.Duration(s)/1024 }

// Deadline returns t moved later by the share of the time left until it;
// the zero time (no deadline) and a time already past are returned as they
// are.
func (s Share) Deadline(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	left := time.Until(t)
	if left <= 0 {
		return t
	}
	return t.Add(s.Of(left) - left)
}
