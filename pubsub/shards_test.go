package pubsub_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/pubsub"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

// Shards subscribes channels spread over every master with one connection
// per master, delivers what is published on them, and lets go of the ones
// removed.
func TestShardsSubscribeOnEveryMasterWithOneConnectionEach(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	cc := c.Client()
	got := make(chan *redis.Message, 100)
	s := pubsub.NewShards(cc, pubsub.ShardsConfig{
		Name:      "test",
		OnMessage: func(_ context.Context, m *redis.Message) { got <- m },
		Logger:    nodetest.Logger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()

	var channels []string
	for i := range 30 {
		channels = append(channels, fmt.Sprintf("dmb:%d", 1000+i))
	}
	s.Add(channels...)
	nodetest.Eventually(t, "every channel subscribed", s.Up)

	masters := map[string]bool{}
	for _, ch := range channels {
		masters[c.MasterOf(ch).Addr()] = true
	}
	if len(masters) != 3 {
		t.Fatalf("the channels landed on %d masters; want all 3", len(masters))
	}
	for addr := range masters {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		list, err := rdb.ClientList(ctx).Result()
		_ = rdb.Close()
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(list, "flags=P"); n != 1 {
			t.Errorf("%s has %d pub/sub connections, want 1", addr, n)
		}
	}

	for _, ch := range channels {
		if n, err := cc.SPublish(ctx, ch, "hello "+ch).Result(); err != nil || n != 1 {
			t.Fatalf("SPUBLISH %s reached %d (%v), want 1", ch, n, err)
		}
	}
	seen := map[string]bool{}
	timeout := time.After(nodetest.Wait)
	for range channels {
		select {
		case m := <-got:
			if m.Payload != "hello "+m.Channel {
				t.Fatalf("on %s: %q", m.Channel, m.Payload)
			}
			seen[m.Channel] = true
		case <-timeout:
			t.Fatalf("got messages on %d channels, want %d", len(seen), len(channels))
		}
	}
	if len(seen) != len(channels) {
		t.Fatalf("got messages on %d channels, want %d", len(seen), len(channels))
	}

	s.Remove(channels[:10]...)
	nodetest.Eventually(t, "removed channels unsubscribed", func() bool {
		counts, err := pubsub.NumSub(ctx, cc, channels...)
		if err != nil {
			return false
		}
		for i, ch := range channels {
			if want := int64(min(i/10, 1)); counts[ch] != want {
				return false
			}
		}
		return true
	})
	if !s.Up() {
		t.Fatal("not up after removing channels")
	}
}
