package downlink

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// The subscriptions' readers only hand what Redis sends to a queue, which
// one worker drains into Handle, so that a slow fan-out never keeps them
// from reading: Redis cuts a subscriber that reads too slowly (its pub/sub
// output buffer limit), and every client of every service would lose
// messages. The queue is bounded in bytes (MaxQueued): what does not fit
// is dropped and counted, as is a payload larger than MaxPayload. One
// queue and one worker keep every channel's order.

// handoff is the queue between the readers and the worker.
type handoff struct {
	ch     chan *redis.Message
	queued atomic.Int64 // payload bytes in ch
}

// handoffSlots bounds the messages in the queue, whatever their size.
const handoffSlots = 1 << 14

// Defaults of the settings that a Config leaves at zero.
const (
	DefaultMaxQueued  = 64 << 20
	DefaultMaxPayload = 1 << 20
)

// offer queues msg for the worker, or drops it. It never waits: it runs on
// a subscription's reader.
func (d *Downlink) offer(ctx context.Context, msg *redis.Message) {
	n := int64(len(msg.Payload))
	if n > int64(d.maxPayload) {
		d.m.Drops.WithLabelValues(metrics.DropTooLarge).Inc()
		if bkid, ok := d.cfg.Channels.DownlinkBKID(msg.Channel); ok {
			d.log.Debug("downlink payload too large: dropped", "bkid", bkid, "bytes", n)
			d.publish(bkid, protocol.AppendBackendError(nil, "payload too large", nil, d.cfg.NodeID))
		}
		return
	}
	if d.q.queued.Add(n) > int64(d.maxQueued) {
		d.q.queued.Add(-n)
		d.m.Drops.WithLabelValues(metrics.DropDownlinkBehind).Inc()
		return
	}
	select {
	case d.q.ch <- msg:
	default:
		d.q.queued.Add(-n)
		d.m.Drops.WithLabelValues(metrics.DropDownlinkBehind).Inc()
	}
}

// work hands queued messages to Handle until ctx ends.
func (d *Downlink) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-d.q.ch:
			d.q.queued.Add(-int64(len(msg.Payload)))
			d.Handle(ctx, msg.Channel, []byte(msg.Payload))
		case task := <-d.tasks:
			task()
		}
	}
}
