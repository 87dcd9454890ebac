// Package ratelimit is a token bucket small enough to keep one per client:
// the broker limits each client's frames with it, the uplink what it
// publishes to each backend. It takes no lock: its owner serialises its
// calls.
package ratelimit

import (
	"math"
	"time"
)

// Bucket holds up to burst tokens, refilled at rate a second; each event
// takes one. The zero Bucket is full.
type Bucket struct {
	tokens float64
	last   int64 // when tokens was last filled (UnixNano); 0: never
}

// Allow takes a token at now, if there is one.
func (t *Bucket) Allow(now time.Time, rate float64, burst int) bool {
	return t.AllowAbove(now, rate, burst, 0)
}

// AllowAbove takes a token at now if one is left over keep tokens: what
// is kept is for the callers that ask with a smaller keep.
func (t *Bucket) AllowAbove(now time.Time, rate float64, burst int, keep float64) bool {
	ns := now.UnixNano()
	if t.last == 0 {
		t.tokens = float64(burst)
	} else {
		t.tokens = min(float64(burst), t.tokens+float64(ns-t.last)*rate/1e9)
	}
	t.last = ns
	if t.tokens < 1+keep {
		return false
	}
	t.tokens--
	return true
}

// Wait is how long after the last fill the bucket holds a whole token
// again at rate; 0 when it holds one already.
func (t *Bucket) Wait(rate float64) time.Duration {
	if t.tokens >= 1 || rate <= 0 {
		return 0
	}
	return time.Duration(math.Ceil((1 - t.tokens) / rate * 1e9))
}

// Below tells whether the bucket held fewer than n tokens when last
// filled: its owner has lately been spending faster than the rate.
func (t *Bucket) Below(n float64) bool { return t.last != 0 && t.tokens < n }
