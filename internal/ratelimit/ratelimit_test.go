package ratelimit

import (
	"testing"
	"time"
)

func TestTheTokenBucketAllowsABurstThenTheRate(t *testing.T) {
	var b Bucket
	start := time.Unix(1000, 0)
	for i := range 5 {
		if !b.Allow(start, 10, 5) {
			t.Fatalf("frame %d of the burst refused", i)
		}
	}
	if b.Allow(start, 10, 5) {
		t.Fatal("a frame past the burst allowed")
	}
	if !b.Allow(start.Add(100*time.Millisecond), 10, 5) {
		t.Fatal("a frame a tenth of a second later refused at 10/s")
	}
	if b.Allow(start.Add(150*time.Millisecond), 10, 5) {
		t.Fatal("a second frame within that tenth allowed")
	}
	// Idle for long, the bucket is full again, never fuller.
	for i := range 5 {
		if !b.Allow(start.Add(time.Hour), 10, 5) {
			t.Fatalf("frame %d after an hour refused", i)
		}
	}
	if b.Allow(start.Add(time.Hour), 10, 5) {
		t.Fatal("the bucket held more than its burst")
	}
}
