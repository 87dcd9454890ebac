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

func TestWhatABucketKeepsIsLeftToTheCallersThatKeepLess(t *testing.T) {
	var b Bucket
	now := time.Unix(1000, 0)
	taken := 0
	for b.AllowAbove(now, 10, 8, 2) {
		taken++
	}
	if taken != 6 {
		t.Fatalf("%d tokens taken above a keep of 2 from 8, want 6", taken)
	}
	if !b.Below(4) || b.Below(2) {
		t.Fatal("Below does not tell the 2 tokens left")
	}
	for i := range 2 {
		if !b.Allow(now, 10, 8) {
			t.Fatalf("kept token %d refused to a caller that keeps none", i)
		}
	}
	if b.Allow(now, 10, 8) {
		t.Fatal("a token taken from an empty bucket")
	}
	var fresh Bucket
	if fresh.Below(1) {
		t.Fatal("a bucket never used is below 1")
	}
}

func TestWaitIsTheTimeToTheNextToken(t *testing.T) {
	var b Bucket
	now := time.Unix(1000, 0)
	if !b.Allow(now, 10, 1) {
		t.Fatal("the first token refused")
	}
	if got := b.Wait(10); got != 100*time.Millisecond {
		t.Fatalf("Wait at 10/s with the bucket empty = %v, want 100ms", got)
	}
	if b.Allow(now.Add(40*time.Millisecond), 10, 1) {
		t.Fatal("a token allowed before it was due")
	}
	if got := b.Wait(10); got < 59*time.Millisecond || got > 61*time.Millisecond {
		t.Fatalf("Wait 40 ms later = %v, want 60ms", got)
	}
	if !b.Allow(now.Add(100*time.Millisecond), 10, 1) {
		t.Fatal("the token refused when it was due")
	}
	b.Allow(now.Add(time.Hour), 10, 5)
	if got := b.Wait(10); got != 0 {
		t.Fatalf("Wait with tokens left = %v, want 0", got)
	}
}
