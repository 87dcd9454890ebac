package broker

import (
	"context"
	"errors"

	"github.com/dmb-broker/dmb/protocol"
)

// Shutdown stops accepting clients; stops passing on what clients send;
// once the uplink has published and answered every frame already read,
// closes each client with 1001 after what is queued for it; and waits until
// every session has ended and told its backend. When ctx ends first, it
// cancels what sessions wait for (a full uplink queue), drops the
// connections that are left, and returns once their sessions have ended,
// whatever their readers were doing.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	b.closing = true
	sessions := make([]*session, 0, len(b.byCID))
	for _, s := range b.byCID {
		sessions = append(sessions, s)
	}
	b.mu.Unlock()

	// The barrier waits for readers that are passing a frame on and for
	// room in the uplink's queue: it runs beside the wait for ctx, and
	// b.cancel ends its waits.
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for _, s := range sessions {
			s.stopForwarding()
			closeAfter := func() {
				s.q.close(closeReq{code: protocol.CloseGoingAway, reason: "server shutting down", flush: true})
			}
			if err := b.up.After(b.ctx, s, closeAfter); err != nil {
				closeAfter()
			}
		}
		b.sessions.Wait()
	}()
	select {
	case <-ended:
		b.cancel()
		return nil
	case <-ctx.Done():
		b.cancel()
		b.dropAll()
		<-ended
		return errors.Join(errors.New("clients dropped at shutdown timeout"), ctx.Err())
	}
}

// dropAll closes every connection left, without a close handshake: their
// sessions end at once.
func (b *Broker) dropAll() {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, s := range b.byCID {
		_ = s.t.CloseNow()
	}
}
