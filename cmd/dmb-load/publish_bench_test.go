package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

// publishTarget is a real redis-server, a node on it (which loads DMB's
// function and subscribes to the backend's downlink) and the generator's
// backend, registered, with no client connected.
func publishTarget(b *testing.B, recoverable bool) (*loadBackend, func() float64) {
	b.Helper()
	rs := redistest.Start(b)
	nodetest.Start(b, nodetest.Config(b, rs), node.Options{})
	o := defaultOptions()
	o.Redis, o.Recoverable = rs.Addr(), recoverable
	lb, err := startBackend(context.Background(), &o, &runClock{start: time.Now()}, &histogram{}, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lb.close)
	usedMemory := func() float64 {
		info, err := lb.rdb.Info(context.Background(), "memory").Result()
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		b.Fatal("INFO memory has no used_memory")
		return 0
	}
	return lb, usedMemory
}

// broadcastBatch is n broadcast commands of the given data size.
func broadcastBatch(n, payload int) [][]byte {
	pad := make([]byte, payload)
	for i := range pad {
		pad[i] = 'x'
	}
	cmds := make([][]byte, n)
	for i := range cmds {
		cmds[i] = appendBroadcast(nil, int64(i+1), 1, payload, pad)
	}
	return cmds
}

// BenchmarkPublishPipelined is what one backend connection gets through,
// in pipelines of publishBatchMax broadcasts of 100 bytes of data: PUBLISH
// (live-only) against FCALL dmb_publish (recoverable). One op is one
// message.
//
//	go test -run '^$' -bench PublishPipelined -benchtime 200000x ./cmd/dmb-load/
func BenchmarkPublishPipelined(b *testing.B) {
	for _, recoverable := range []bool{false, true} {
		name := "PUBLISH"
		if recoverable {
			name = "FCALL"
		}
		b.Run(name, func(b *testing.B) {
			lb, _ := publishTarget(b, recoverable)
			cmds := broadcastBatch(publishBatchMax, 100)
			ctx := context.Background()
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += publishBatchMax {
				if _, err := lb.publishBatch(ctx, lb.downlink(), cmds[:min(publishBatchMax, b.N-sent)]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "publishes/s")
		})
	}
}

// BenchmarkHistoryMemory is what Redis holds for 10,000 recoverable
// broadcasts of 100 bytes of data (DMB_HISTORY_SIZE's default): MEMORY
// USAGE of the backend's history stream, and the growth of used_memory.
//
//	go test -run '^$' -bench HistoryMemory -benchtime 1x ./cmd/dmb-load/
func BenchmarkHistoryMemory(b *testing.B) {
	const messages = 10000
	for range b.N {
		b.StopTimer()
		lb, usedMemory := publishTarget(b, true)
		cmds := broadcastBatch(publishBatchMax, 100)
		ctx := context.Background()
		before := usedMemory()
		b.StartTimer()
		for sent := 0; sent < messages; sent += publishBatchMax {
			if _, err := lb.publishBatch(ctx, lb.downlink(), cmds[:min(publishBatchMax, messages-sent)]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		key := history.Key(lb.downlink())
		n, err := lb.rdb.XLen(ctx, key).Result()
		if err != nil || n != messages {
			b.Fatalf("XLEN %s = %d, %v; want %d", key, n, err, messages)
		}
		usage, err := lb.rdb.MemoryUsage(ctx, key, 0).Result()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(usage), "stream-bytes/10k")
		b.ReportMetric(usedMemory()-before, "used_memory-bytes/10k")
		b.ReportMetric(float64(len(cmds[0])), "command-bytes")
	}
}
