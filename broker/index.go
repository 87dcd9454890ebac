package broker

import (
	"log/slog"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// The index finds sessions by cid, by service and by user, under b.mu:
// written when a session starts and ends, read by every fan-out.

// userKey is a user within a service: a backend reaches only the clients
// of its own service.
type userKey struct{ service, user string }

// add indexes a new session and queues its first frame, dmb:connected; or
// returns the close code and reason that refuse it: the broker is shutting
// down, or holds as many clients as it may, in all or from the session's
// address. The frame is queued under b.mu, which fan-out holds for
// reading, so no other frame can come before it, and a client that reads
// dmb:connected is already reachable.
func (b *Broker) add(s *session) (code int, reason string) { return b.addSession(s, nil, false) }

// addSession is add for a new or a resumed session: a resumed one gets the
// frames it missed right after dmb:connected, which says whether they are
// all it missed (recovered), and joins the rooms it was in; an older
// connection of its session on this node is closed with 4010.
func (b *Broker) addSession(s *session, missed [][]byte, recovered bool) (code int, reason string) {
	connected := protocol.AppendConnected(nil, protocol.Connected{
		CID: s.cid, Service: s.service, Session: s.token(), Resumed: s.resumed, Recovered: recovered,
	})
	key := ""
	if b.cfg.MaxClientsPerAddr > 0 && b.limitsAddr(s.remote) {
		key = addrKey(s.remote)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closing:
		return protocol.CloseGoingAway, "server shutting down"
	case b.cfg.MaxClients > 0 && len(b.byCID) >= b.cfg.MaxClients:
		return protocol.CloseTryAgainLater, "node full"
	case key != "" && b.byAddr[key] >= b.cfg.MaxClientsPerAddr:
		return protocol.CloseTryAgainLater, "too many connections from this address"
	}
	if key != "" {
		b.byAddr[key]++
		s.addrKey = key
	}
	s.q.push(connected, 1)
	for _, f := range missed {
		s.q.push(f, 1)
	}
	if older := b.byCID[s.cid]; older != nil {
		b.supersede(older) // it leaves the sets by itself; the cid is s's now
	}
	b.sessions.Add(1)
	b.queues.sessions.Add(1)
	b.byCID[s.cid] = s
	set := b.byService[s.service]
	if set == nil {
		set = make(map[*session]struct{})
		b.byService[s.service] = set
	}
	set[s] = struct{}{}
	if s.user != "" {
		k := userKey{s.service, s.user}
		if b.byUser[k] == nil {
			b.byUser[k] = make(map[*session]struct{})
		}
		b.byUser[k][s] = struct{}{}
	}
	for room := range s.rooms {
		b.addMemberLocked(s, room)
	}
	b.m.Connections.WithLabelValues(s.service).Inc()
	b.m.Connects.WithLabelValues(s.service).Inc()
	b.m.MessagesOut.WithLabelValues(metrics.KindConnected).Inc()
	return 0, ""
}

// remove takes an ended session out of the index.
func (b *Broker) remove(s *session) {
	b.mu.Lock()
	if b.byCID[s.cid] == s { // else a resume on this node took the cid
		delete(b.byCID, s.cid)
	}
	if set := b.byService[s.service]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(b.byService, s.service)
		}
	}
	if s.user != "" {
		k := userKey{s.service, s.user}
		delete(b.byUser[k], s)
		if len(b.byUser[k]) == 0 {
			delete(b.byUser, k)
		}
	}
	b.leaveAllLocked(s)
	if k := s.addrKey; k != "" {
		if b.byAddr[k]--; b.byAddr[k] <= 0 {
			delete(b.byAddr, k)
		}
	}
	b.mu.Unlock()
	b.queues.sessions.Add(-1)
	b.m.Connections.WithLabelValues(s.service).Dec()
}

// lookup finds a session by cid within a service: a backend reaches only
// the clients of its own service.
func (b *Broker) lookup(service, cid string) *session {
	b.mu.RLock()
	s := b.byCID[cid]
	b.mu.RUnlock()
	if s == nil || s.service != service {
		return nil
	}
	return s
}

// Clients returns the number of clients connected to this node.
func (b *Broker) Clients() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.byCID)
}

// Kick closes the client cid with 4009 if it is a client of service, after
// the frames queued before the kick.
func (b *Broker) Kick(service, cid, reason string) int {
	s := b.lookup(service, cid)
	if s == nil || !s.q.close(closeReq{code: protocol.CloseKicked, reason: reason, flush: true}) {
		return 0
	}
	b.log.Info("client kicked", "cid", cid, "service", service, "reason", reason)
	return 1
}

// Close closes the client cid with code and reason after its queued
// frames, for the operator; false when no such client is connected here.
func (b *Broker) Close(cid string, code int, reason string) bool {
	b.mu.RLock()
	s := b.byCID[cid]
	b.mu.RUnlock()
	if s == nil {
		return false
	}
	s.log(slog.LevelInfo, "client closed by operator", "code", code, "reason", reason)
	return s.q.close(closeReq{code: code, reason: protocol.TruncateReason(reason), flush: true})
}

// CloseAll closes every client with code and reason after its queued
// frames.
func (b *Broker) CloseAll(code int, reason string) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, s := range b.byCID {
		s.q.close(closeReq{code: code, reason: reason, flush: true})
	}
}
