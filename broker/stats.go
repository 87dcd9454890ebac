package broker

import (
	"log/slog"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/protocol"
)

// Stats is a snapshot of the broker for the operator.
type Stats struct {
	Clients   int            `json:"clients"`
	ByService map[string]int `json:"by_service"`
	// Queued is the number of frames waiting in all send queues; MaxQueued
	// the longest single queue, and QueueLimit what DMB_SEND_QUEUE allows.
	Queued     int `json:"queued_frames"`
	MaxQueued  int `json:"max_queued_frames"`
	QueueLimit int `json:"queue_limit"`
	// HalfFull counts the clients whose queue is over half the limit: the
	// ones that are close to being closed as slow consumers.
	HalfFull int `json:"clients_over_half_queue"`
}

// Stats returns a snapshot of the clients and their queues.
func (b *Broker) Stats() Stats {
	b.mu.RLock()
	clients := make([]*client, 0, len(b.byCID))
	st := Stats{ByService: make(map[string]int, len(b.byService)), QueueLimit: b.cfg.SendQueue}
	for svc, set := range b.byService {
		st.ByService[svc] = len(set)
	}
	for _, c := range b.byCID {
		clients = append(clients, c)
	}
	b.mu.RUnlock()
	st.Clients = len(clients)
	for _, c := range clients {
		n := c.q.len()
		st.Queued += n
		st.MaxQueued = max(st.MaxQueued, n)
		if n > b.cfg.SendQueue/2 {
			st.HalfFull++
		}
	}
	return st
}

// QueuedFrames returns the frames waiting in all send queues.
func (b *Broker) QueuedFrames() float64 { return float64(b.Stats().Queued) }

// Close closes the client cid with code and reason after its queued frames;
// false when no such client is connected here.
func (b *Broker) Close(cid string, code websocket.StatusCode, reason string) bool {
	b.mu.RLock()
	c := b.byCID[cid]
	b.mu.RUnlock()
	if c == nil {
		return false
	}
	c.log(slog.LevelInfo, "client closed by operator", "code", int(code), "reason", reason)
	return c.q.close(closeReq{code: int(code), reason: protocol.TruncateReason(reason), flush: true})
}
