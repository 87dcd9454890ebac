package broker

import (
	"log/slog"
	"time"
)

// watchWrites bounds every socket write of the broker's clients by the
// write timeout: it closes the connection of each client whose write has
// been in progress for longer, so that a client that stopped reading
// cannot hold its writer, and the library's lock, for ever. The writer's
// write then fails and the session ends.
//
// One watchdog per broker instead of a socket deadline per write: setting
// a deadline updates a runtime timer on every write, which cost about a
// tenth of the CPU of a broadcast to 10,000 clients; the watchdog looks at
// each client a few times per timeout. A stalled write is thus cut after
// between one and one and a quarter write timeouts.
//
// It runs from the first client on (startLoops) until Shutdown.
func (b *Broker) watchWrites() {
	defer b.watchdog.Done()
	t := time.NewTicker(max(b.cfg.WriteTimeout/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case now := <-t.C:
			b.closeStalledWrites(now)
		}
	}
}

// closeStalledWrites closes the connections whose write began more than the
// write timeout before now.
func (b *Broker) closeStalledWrites(now time.Time) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, c := range b.byCID {
		if c.wire != nil && c.wire.stalled(now, b.cfg.WriteTimeout) {
			c.log(slog.LevelDebug, "write timed out: closing")
			_ = c.wire.Close()
		}
	}
}
