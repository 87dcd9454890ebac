package node_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// hgetCalls reads how many HGET commands the Redis server has run: the
// look-ups of a bkid's record.
func hgetCalls(t *testing.T, rdb redis.UniversalClient) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_hget:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

func TestPublishesForUnknownBKIDsCostABoundedNumberOfLookups(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	b := e.startBackend("chat") // the bkid counter now exists
	c := connect(t, n, "chat").welcome()
	mine, _ := strconv.ParseUint(b.BKID(), 10, 64)
	if err := e.rdb.ConfigResetStat(e.ctx()).Err(); err != nil {
		t.Fatal(err)
	}
	// 100,000 publishes on downlinks of bkids DMB never issued: half on one
	// bkid below the counter, half on distinct bkids, below and above it.
	const total = 100000
	start := time.Now()
	for sent := 0; sent < total; {
		pipe := e.rdb.Pipeline()
		for range 1000 {
			var bkid uint64
			switch {
			case sent%2 == 0:
				bkid = 7
			case sent%4 == 1:
				bkid = 1 + uint64(sent)
			default:
				bkid = mine + 1000 + uint64(sent)
			}
			pipe.Publish(e.ctx(), "dmb:"+strconv.FormatUint(bkid, 10), `{"type":"broadcast","data":"forged"}`)
			sent++
		}
		if _, err := pipe.Exec(e.ctx()); err != nil {
			t.Fatal(err)
		}
	}
	// Each is dropped as unknown, or before that when the downlink's queue
	// is full; 100,000 take a few seconds, more on a busy machine.
	var unknown, behind float64
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Minute); ; <-tick.C {
		unknown, behind = n.metric(`dmb_drops_total{reason="unknown_bkid"}`), n.metric(`dmb_drops_total{reason="downlink_behind"}`)
		if unknown+behind >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, %v of %d forged publishes dropped as unknown, %v as behind", unknown, total, behind)
		}
	}
	took := time.Since(start)
	// The budget is 100 look-ups a second, as many at once.
	lookups := hgetCalls(t, e.rdb)
	if bound := 100 + int(100*took.Seconds()) + 1; lookups > bound {
		t.Errorf("%d look-ups for %d publishes in %v, want at most %d", lookups, total, took, bound)
	}
	if got := n.metric(`dmb_bkid_lookups_total{result="cached"}`); got < total/2-100-behind {
		t.Errorf("cached: %v, want the repeated bkid answered from the cache", got)
	}
	if got := n.metric(`dmb_bkid_lookups_total{result="limited"}`); got == 0 {
		t.Errorf("nothing limited")
	}
	t.Logf("%d publishes on unknown bkids in %v: %d Redis look-ups (%v dropped as behind)", total, took.Round(time.Millisecond), lookups, behind)
	// The real backend's messages still arrive.
	b.publish(t, `{"type":"broadcast","data":"real"}`)
	if f := c.nextEvent("dmb:broadcast"); string(f.Data) != `"real"` {
		t.Fatalf("broadcast = %s", f.Data)
	}
}
