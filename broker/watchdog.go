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
// tenth of the CPU of a broadcast to 10,000 clients. The watchdog looks at
// every session lookEvery times per timeout, and each session's timeouts
// are lengthened by its own share (see internal/spread): a stalled write
// is cut after between one and about one and a third write timeouts.
func (b *Broker) watchWrites(ctx context.Context) {
	tick := b.frameTimeout()
	if w := b.cfg.WriteTimeout; w > 0 {
		tick = min(tick, w)
	}
	t := time.NewTicker(max(tick/lookEvery, time.Millisecond))
	defer t.Stop()
	var sessions []*session // reused from one look to the next
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			sessions = b.closeStalledWrites(ctx, now, sessions)
		}
	}
}

// closeStalledWrites drops the connections whose write began more than the
// write timeout before now, or whose client began a frame more than the
// frame timeout before, each lengthened by the session's share; it returns
// buf, emptied, for the next look.
//
// Clients that stalled together are cut apart, so that their ends, and
// what they do next, do not come in one burst: 500 that each sent half a
// frame at once (dmb-load -attack trickle) were dropped in one loop, and
// reconnected in the next instant, while the honest clients' frames
// waited. Their shares spread them over a quarter of the timeout, and a
// look drops dropTurn of them at a time, dropPause apart.
//
// The sessions are listed under b.mu and looked at after it is released:
// the drops were made holding b.mu for reading, so that the sessions they
// ended, and every new one, waited for all 500 closes before they could
// leave or join.
func (b *Broker) closeStalledWrites(ctx context.Context, now time.Time, buf []*session) []*session {
	b.mu.RLock()
	for _, s := range b.byCID {
		buf = append(buf, s)
	}
	b.mu.RUnlock()
	defer clear(buf) // hold no session until the next look
	dropped := 0
	for _, s := range buf {
		if !s.t.DropIfStalled(now, s.share.Of(b.cfg.WriteTimeout), s.share.Of(b.frameTimeout())) {
			continue
		}
		s.log(slog.LevelDebug, "write or frame timed out: connection dropped")
		if dropped++; dropped%dropTurn != 0 {
			continue
		}
		select {
		case <-time.After(dropPause):
		case <-ctx.Done():
			return buf[:0]
		}
	}
	return buf[:0]
}

// lookEvery is how many times per timeout the watchdog looks at every
// session: every 500 ms with the default timeouts. A look reads two clocks
// of each session, about 0.08 µs a session whose memory is out of the
// caches (BenchmarkWatchdogLook).
const lookEvery = 20

// A look drops at most dropTurn connections every dropPause: 1,600 a
// second.
const (
	dropTurn  = 4
	dropPause = 2500 * time.Microsecond
)

// frameTimeout is the time a client has to finish a frame it began.
func (b *Broker) frameTimeout() time.Duration { return cmp.Or(b.cfg.FrameTimeout, DefaultFrameTimeout) }

// DefaultFrameTimeout is the frame timeout of a Config that sets none.
const DefaultFrameTimeout = 10 * time.Second
