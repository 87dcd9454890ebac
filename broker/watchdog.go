package broker

import (
	"cmp"
	"context"
	"log/slog"
	"runtime"
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
	var sessions []*session // reused from one look to the next
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			sessions = b.closeStalledWrites(now, sessions)
		}
	}
}

// closeStalledWrites drops the connections whose write began more than the
// write timeout before now, or whose client began a frame more than the
// frame timeout before; it returns buf, emptied, for the next look.
//
// The sessions are listed under b.mu and looked at after it is released,
// with a turn for the other goroutines every dropTurn drops. Clients who
// began together are cut together: 500 that each sent half a frame at
// once (dmb-load -attack trickle) were dropped in one loop that held b.mu
// for reading, so that the sessions it ended, and every new one, waited
// for all 500 closes before they could leave or join.
func (b *Broker) closeStalledWrites(now time.Time, buf []*session) []*session {
	b.mu.RLock()
	for _, s := range b.byCID {
		buf = append(buf, s)
	}
	b.mu.RUnlock()
	dropped := 0
	for _, s := range buf {
		if !s.t.DropIfStalled(now, b.cfg.WriteTimeout, b.frameTimeout()) {
			continue
		}
		s.log(slog.LevelDebug, "write or frame timed out: connection dropped")
		if dropped++; dropped%dropTurn == 0 {
			runtime.Gosched()
		}
	}
	clear(buf) // hold no session until the next look
	return buf[:0]
}

// dropTurn is how many connections the watchdog drops before it lets the
// other goroutines run.
const dropTurn = 16

// frameTimeout is the time a client has to finish a frame it began.
func (b *Broker) frameTimeout() time.Duration { return cmp.Or(b.cfg.FrameTimeout, DefaultFrameTimeout) }

// DefaultFrameTimeout is the frame timeout of a Config that sets none.
const DefaultFrameTimeout = 10 * time.Second
