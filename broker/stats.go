package broker

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
	sessions := make([]*session, 0, len(b.byCID))
	st := Stats{ByService: make(map[string]int, len(b.byService)), QueueLimit: b.cfg.SendQueue}
	for svc, set := range b.byService {
		st.ByService[svc] = len(set)
	}
	for _, s := range b.byCID {
		sessions = append(sessions, s)
	}
	b.mu.RUnlock()
	st.Clients = len(sessions)
	for _, s := range sessions {
		n := s.q.len()
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
