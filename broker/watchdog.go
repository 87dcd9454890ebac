package broker

import (
	"cmp"
	"context"
	"log/slog"
	"time"
)

// watchWrites bounds every write of the broker's sessions by the write
// timeout, and every frame from their clients by the frame timeout, until
// ctx ends: it drops the connection of each session whose write or frame
// has been in progress for longer, so that a client that stopped reading
// cannot hold its writer, and the library's lock, for ever, and one that
// sends half a frame cannot hold its connection. The write or the read
// then fails and the session ends.
//
// One watchdog per broker instead of a socket deadline per write: setting
// a deadline updates a runtime timer on every write, which cost about a
// tenth of the CPU of a broadcast to 10,000 clients; the watchdog looks at
// each session a few times per timeout. A stalled write is thus cut after
// between one and one and a quarter write timeouts.
func (b *Broker) watchWrites(ctx context.Context) {
	tick := b.frameTimeout()
	if w := b.cfg.WriteTimeout; w > 0 {
		tick = min(tick, w)
	}
	t := time.NewTicker(max(tick/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			b.closeStalledWrites(now)
		}
	}
}

// closeStalledWrites drops the connections whose write began more than the
// write timeout before now.
func (b *Broker) closeStalledWrites(now time.Time) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, s := range b.byCID {
		if s.t.DropIfStalled(now, b.cfg.WriteTimeout, b.frameTimeout()) {
			s.log(slog.LevelDebug, "write or frame timed out: connection dropped")
		}
	}
}

// frameTimeout is the time a client has to finish a frame it began.
func (b *Broker) frameTimeout() time.Duration { return cmp.Or(b.cfg.FrameTimeout, DefaultFrameTimeout) }

// DefaultFrameTimeout is the frame timeout of a Config that sets none.
const DefaultFrameTimeout = 10 * time.Second
