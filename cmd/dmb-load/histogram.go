package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram records durations in log-linear buckets, as HDR histograms do:
// exact below 128 ns, then 64 equal steps per power of two, so a reported
// quantile is within 1.6% of the true one. Its size is fixed (about 18 KiB
// per shard) whatever the number of samples: no per-message memory.
//
// Many reader goroutines record at once; each records into the shard its
// client index picks, with atomic adds, so that two cores seldom share a
// cache line.
type histogram struct {
	shards [histShards]histShard
}

const (
	histSubBits  = 6
	histSub      = 1 << histSubBits // steps per power of two
	histMaxBits  = 40               // values up to 2^40 ns (about 18 minutes)
	histBuckets  = (histMaxBits - histSubBits + 1) << histSubBits
	histMaxValue = 1<<histMaxBits - 1
	histShards   = 16
)

type histShard struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64 // ns; overflows only after 584 years of latency
	max    atomic.Uint64
	_      [64]byte // keep the next shard's counters off this cache line
}

// bucketOf returns the bucket index of v ns.
func bucketOf(v uint64) int {
	if v > histMaxValue {
		v = histMaxValue
	}
	shift := bits.Len64(v) - histSubBits - 1
	if shift < 1 {
		return int(v) // v < 128: one bucket per value
	}
	return shift<<histSubBits + int(v>>shift)
}

// bucketRange returns the lowest value of bucket i and its width.
func bucketRange(i int) (low, width uint64) {
	if i < 2*histSub {
		return uint64(i), 1
	}
	shift := i>>histSubBits - 1
	return uint64(i-shift<<histSubBits) << shift, 1 << shift
}

// record adds one duration; shard is any number (a client's index).
func (h *histogram) record(shard int, d time.Duration) {
	if d < 0 {
		d = 0
	}
	v := uint64(d)
	s := &h.shards[uint(shard)%histShards]
	s.counts[bucketOf(v)].Add(1)
	s.n.Add(1)
	s.sum.Add(v)
	for {
		m := s.max.Load()
		if v <= m || s.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// latencySummary is what the report shows of a histogram, in microseconds.
type latencySummary struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// summary merges the shards. It may run while others record; the figures
// are then of a moment during the run.
func (h *histogram) summary() latencySummary {
	var counts [histBuckets]uint64
	var n, sum, hi uint64
	for i := range h.shards {
		s := &h.shards[i]
		for b := range counts {
			counts[b] += s.counts[b].Load()
		}
		n += s.n.Load()
		sum += s.sum.Load()
		hi = max(hi, s.max.Load())
	}
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return latencySummary{}
	}
	q := func(p float64) float64 {
		// The smallest value with at least p of the samples at or below it,
		// reported as its bucket's midpoint (and never above the maximum).
		rank := uint64(math.Ceil(p * float64(total)))
		rank = min(max(rank, 1), total)
		var seen uint64
		for b, c := range counts {
			if seen += c; seen >= rank {
				low, width := bucketRange(b)
				return us(min(low+(width-1)/2, hi))
			}
		}
		return us(hi)
	}
	return latencySummary{
		Count: n,
		Mean:  us(sum / max(n, 1)),
		P50:   q(0.50),
		P90:   q(0.90),
		P99:   q(0.99),
		P999:  q(0.999),
		Max:   us(hi),
	}
}

// us converts ns to microseconds with 0.1 µs precision.
func us(ns uint64) float64 { return math.Round(float64(ns)/100) / 10 }
