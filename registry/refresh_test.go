package registry

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// A refresh of many services (a registration flood fills the registry)
// reads them from Redis refreshChunk at a time: no pipeline or PUBSUB
// NUMSUB of the whole registry stalls Redis, or the node, for the clients'
// traffic. Redis's MONITOR shows the commands in the order Redis ran them.
func TestARefreshReadsManyServicesInChunks(t *testing.T) {
	rs := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	const services = 1000
	rdb := rs.Client()
	pipe := rdb.Pipeline()
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		pipe.SAdd(ctx, "{dmb}:services", name)
		pipe.SAdd(ctx, "{dmb}:service:"+name, 1000000+i)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}

	mon, err := (&net.Dialer{}).DialContext(ctx, "tcp", rs.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	_ = mon.SetDeadline(time.Now().Add(wait))
	if _, err := mon.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(mon)
	if ok, err := lines.ReadString('\n'); err != nil || ok != "+OK\r\n" {
		t.Fatalf("MONITOR: %q, %v", ok, err)
	}

	m := metrics.New(prometheus.NewRegistry())
	reg := New(redis.NewClient(&redis.Options{Addr: rs.Addr(), MaxRetries: -1}), Config{
		Channels: protocol.NewChannels("dmb"), NodeID: "node", Logger: slog.New(&logRecords{}),
		Metrics: m, BackendTimeout: time.Hour, BackendRetention: time.Hour,
	})
	defer reg.rdb.Close()
	if err := reg.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := gauge(m.Services); got != services {
		t.Fatalf("services in the view: %v, want %d", got, services)
	}
	if err := rdb.Echo(ctx, "end of the refresh").Err(); err != nil {
		t.Fatal(err)
	}

	// Each SMEMBERS of a service is read in a round of at most 256 (a
	// fraction of a millisecond of Redis's time), and each round's NUMSUB
	// names its bkids.
	const most = 256
	var smembers, inRound, rounds int
	for {
		line, err := lines.ReadString('\n')
		if err != nil {
			t.Fatalf("MONITOR: %v", err)
		}
		switch {
		case strings.Contains(line, `"echo" "end of the refresh"`):
			if smembers != services || inRound != 0 {
				t.Fatalf("%d services read, %d of them after the last NUMSUB; want %d, none", smembers, inRound, services)
			}
			if want := (services + refreshChunk - 1) / refreshChunk; rounds != want || refreshChunk > most {
				t.Errorf("%d rounds of NUMSUB, want %d of at most %d services", rounds, want, most)
			}
			return
		case strings.Contains(line, `"smembers" "{dmb}:service:`):
			smembers++
			if inRound++; inRound > most {
				t.Fatalf("more than %d services read before their NUMSUB", most)
			}
		case strings.Contains(line, `"pubsub" "numsub"`):
			if n := strings.Count(line, `"dmb:uplink:`); n != inRound {
				t.Fatalf("a NUMSUB of %d channels after %d services of one bkid each", n, inRound)
			}
			rounds++
			inRound = 0
		}
	}
}

func gauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
}
