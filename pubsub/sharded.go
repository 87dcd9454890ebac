package pubsub

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Sharded reports whether rdb is a Redis Cluster client, on which DMB uses
// sharded pub/sub (SSUBSCRIBE, SPUBLISH, PUBSUB SHARDNUMSUB) so that each
// channel's traffic stays on the shard that owns its slot. A single server
// and a Sentinel-managed master use plain pub/sub.
func Sharded(rdb redis.UniversalClient) bool {
	_, ok := rdb.(*redis.ClusterClient)
	return ok
}

// Publish queues or runs PUBLISH, or SPUBLISH when sharded, on c (a client
// or a pipeline).
func Publish(ctx context.Context, c redis.Cmdable, sharded bool, channel string, payload any) *redis.IntCmd {
	if sharded {
		return c.SPublish(ctx, channel, payload)
	}
	return c.Publish(ctx, channel, payload)
}

// NumSub returns the number of subscribers of each channel: PUBSUB NUMSUB,
// or on a cluster PUBSUB SHARDNUMSUB asked of the master that owns each
// channel's slot (a shard channel's subscribers are counted there only).
func NumSub(ctx context.Context, rdb redis.UniversalClient, channels ...string) (map[string]int64, error) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return rdb.PubSubNumSub(ctx, channels...).Result()
	}
	byMaster := map[*redis.Client][]string{}
	for _, ch := range channels {
		m, err := cc.MasterForKey(ctx, ch)
		if err != nil {
			return nil, fmt.Errorf("find the master of %s: %w", ch, err)
		}
		byMaster[m] = append(byMaster[m], ch)
	}
	out := make(map[string]int64, len(channels))
	for m, chs := range byMaster {
		counts, err := m.PubSubShardNumSub(ctx, chs...).Result()
		if err != nil {
			return nil, fmt.Errorf("count shard subscribers on %s: %w", m.Options().Addr, err)
		}
		for ch, n := range counts {
			out[ch] = n
		}
	}
	return out, nil
}

// FollowFailovers makes a cluster client read the cluster's slots again
// whenever a command or pipeline fails for want of a connection. go-redis
// learns that a slot moved only when a node answers MOVED; a master that
// died answers nothing, so without this a client keeps dialling it after
// its replica has taken over. Other clients are left as they are.
func FollowFailovers(rdb redis.UniversalClient) {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		cc.AddHook(reloadOnFailure{cc})
	}
}

type reloadOnFailure struct{ cc *redis.ClusterClient }

func (h reloadOnFailure) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnFailure) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(ctx, err)
		return err
	}
}

func (h reloadOnFailure) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(ctx, err)
		return err
	}
}

// check reloads the slots after a failure that is not Redis's answer.
func (h reloadOnFailure) check(ctx context.Context, err error) {
	var answer redis.Error
	if err == nil || errors.As(err, &answer) || ctx.Err() != nil {
		return
	}
	h.cc.ReloadState(ctx)
}
