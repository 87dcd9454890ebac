package broker

import (
	"path"
	"slices"
	"strings"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

// Rooms group the clients of a service. Each node keeps the rooms of its
// own clients only: a backend's join, leave and room message reach every
// node on its downlink, and each node applies them to the clients it
// holds, in the order the backend published. So a room costs no Redis
// state, spans nodes by itself, and a node that dies takes its clients'
// memberships with it. Membership is written under b.mu, like the rest of
// the index, and read by the fan-out.

// roomKey is a room within a service.
type roomKey struct{ service, room string }

// Join puts the client cid, or every connection of user, of service on
// this node into room, and tells each client that joined. It returns how
// many joined (a client already in the room does not count) and how many
// were refused for being in DMB_MAX_CLIENT_ROOMS rooms already.
func (b *Broker) Join(service, cid, user, room string) (joined, refused int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.targetsLocked(service, cid, user) {
		switch b.joinLocked(s, room) {
		case changed:
			joined++
		case full:
			refused++
		}
	}
	return joined, refused
}

// Leave takes the client cid, or every connection of user, out of room,
// and tells each client that left. It returns how many left.
func (b *Broker) Leave(service, cid, user, room string) (left int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.targetsLocked(service, cid, user) {
		if b.leaveLocked(s, room) {
			left++
		}
	}
	return left
}

// Room queues frame to every member of room in service on this node but
// those in except.
func (b *Broker) Room(service, room string, frame []byte, except []string) int {
	k := roomKey{service, room}
	n := b.fanout(func() map[*session]struct{} { return b.rooms[k] }, frame, except)
	b.m.MessagesOut.WithLabelValues(metrics.KindRoom).Add(float64(n))
	b.m.Deliveries.Add(float64(n))
	return n
}

// Presence returns the clients of service on this node, those in room
// when room is not "": their count, and unless countOnly the first limit
// of them (truncated when there were more).
func (b *Broker) Presence(service, room string, countOnly bool, limit int) (count int, members []protocol.Member, truncated bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	set := b.byService[service]
	if room != "" {
		set = b.rooms[roomKey{service, room}]
	}
	if countOnly {
		return len(set), nil, false
	}
	members = make([]protocol.Member, 0, min(len(set), limit))
	for s := range set {
		if len(members) == limit {
			return len(set), members, true
		}
		members = append(members, protocol.Member{CID: s.cid, User: s.user})
	}
	// A stable order, so that answers are easy to read and compare.
	slices.SortFunc(members, func(a, b protocol.Member) int { return strings.Compare(a.CID, b.CID) })
	return len(set), members, false
}

// targetsLocked returns the session cid, or the sessions of user, of
// service. b.mu must be held.
func (b *Broker) targetsLocked(service, cid, user string) []*session {
	if cid != "" {
		if s := b.byCID[cid]; s != nil && s.service == service {
			return []*session{s}
		}
		// Counted as a direct to a cid not here is: every node but the
		// one that holds the client counts it.
		b.m.Drops.WithLabelValues(metrics.DropUnknownClient).Inc()
		return nil
	}
	set := b.byUser[userKey{service, user}]
	out := make([]*session, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	return out
}

type joinResult uint8

const (
	unchanged joinResult = iota
	changed
	full
)

// joinLocked puts s into room and queues dmb:joined to it. b.mu must be
// held for writing.
func (b *Broker) joinLocked(s *session, room string) joinResult {
	if _, in := s.rooms[room]; in {
		return unchanged
	}
	if len(s.rooms) >= b.maxClientRooms() {
		b.m.Drops.WithLabelValues(metrics.DropTooManyRooms).Inc()
		return full
	}
	if s.rooms == nil {
		s.rooms = make(map[string]struct{})
	}
	s.rooms[room] = struct{}{}
	b.addMemberLocked(s, room)
	s.send(protocol.AppendMembership(nil, true, room))
	b.m.MessagesOut.WithLabelValues(metrics.KindRoomEvent).Inc()
	s.sendToken()
	return changed
}

// addMemberLocked puts s, which has room among its rooms, into the room's
// set. b.mu must be held for writing.
func (b *Broker) addMemberLocked(s *session, room string) {
	k := roomKey{s.service, room}
	set := b.rooms[k]
	if set == nil {
		set = make(map[*session]struct{})
		b.rooms[k] = set
	}
	set[s] = struct{}{}
	b.m.RoomMembers.Inc()
}

// leaveLocked takes s out of room and queues dmb:left to it.
// b.mu must be held for writing.
func (b *Broker) leaveLocked(s *session, room string) bool {
	if !b.dropMembershipLocked(s, room) {
		return false
	}
	s.send(protocol.AppendMembership(nil, false, room))
	b.m.MessagesOut.WithLabelValues(metrics.KindRoomEvent).Inc()
	s.sendToken()
	return true
}

// dropMembershipLocked takes s out of room, telling nobody.
func (b *Broker) dropMembershipLocked(s *session, room string) bool {
	if _, in := s.rooms[room]; !in {
		return false
	}
	delete(s.rooms, room)
	k := roomKey{s.service, room}
	if set := b.rooms[k]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(b.rooms, k)
		}
	}
	b.m.RoomMembers.Dec()
	return true
}

// leaveAllLocked takes an ended session out of every room: it is told
// nothing, and its backend learns it from client_disconnected.
func (b *Broker) leaveAllLocked(s *session) {
	for room := range s.rooms {
		b.dropMembershipLocked(s, room)
	}
}

func (b *Broker) maxClientRooms() int {
	if b.cfg.MaxClientRooms > 0 {
		return b.cfg.MaxClientRooms
	}
	return DefaultMaxClientRooms
}

// roomRequest handles a client's own dmb:join or dmb:leave: allowed when
// a pattern of its token's rooms matches the room. The client is told
// dmb:joined or dmb:left when its membership changed, then dmb:ack; its
// backend gets room_joined or room_left, in order with its messages.
func (s *session) roomRequest(frame protocol.ClientFrame) error {
	join := frame.Event == protocol.EventJoin
	kind := metrics.KindLeave
	if join {
		kind = metrics.KindJoin
	}
	s.b.m.MessagesIn.WithLabelValues(kind).Inc()
	if !s.mayJoin(frame.Room) {
		s.b.m.Drops.WithLabelValues(metrics.DropNotAllowed).Inc()
		s.answer(frame.ID, protocol.ErrTextNotAllowed)
		return nil
	}
	b := s.b
	b.mu.Lock()
	var ok bool
	if join {
		switch b.joinLocked(s, frame.Room) {
		case changed:
			ok = true
		case full:
			b.mu.Unlock()
			s.answer(frame.ID, protocol.ErrTextTooManyRooms)
			return nil
		}
	} else {
		ok = b.leaveLocked(s, frame.Room)
	}
	b.mu.Unlock()
	if frame.ID != nil {
		s.send(protocol.AppendAck(nil, frame.ID))
		b.m.MessagesOut.WithLabelValues(metrics.KindAck).Inc()
	}
	if !ok {
		return nil // no change: nothing to tell the backend
	}
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if !s.forwarding {
		return nil
	}
	// Like a message, a full uplink queue holds the reader back.
	return b.up.Event(b.ctx, s, protocol.AppendRoomEvent(nil, join, s.cid, frame.Room, s.user))
}

// mayJoin tells whether the client's token lets it join or leave room by
// itself.
func (s *session) mayJoin(room string) bool {
	for _, p := range s.roomPatterns {
		if ok, err := path.Match(p, room); err == nil && ok {
			return true
		}
	}
	return false
}

// answer sends the client dmb:error with text, for the frame id.
func (s *session) answer(id []byte, text string) {
	s.send(protocol.AppendError(nil, id, text))
	s.b.m.MessagesOut.WithLabelValues(metrics.KindError).Inc()
}
