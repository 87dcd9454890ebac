package protocol

import (
	"encoding/json"
	"strconv"
)

// Rooms, presence and progress (docs/protocol.md, "Rooms, presence,
// progress") and node loss.

// Backend payload types of version 1.1.
const (
	TypeJoin       = "join"
	TypeLeave      = "leave"
	TypeRoom       = "room"
	TypePresence   = "presence"
	TypeRoomJoined = "room_joined" // to the backend: a client joined by itself
	TypeRoomLeft   = "room_left"
)

// Client events of version 1.1.
const (
	EventRoom   = "dmb:room"
	EventJoined = "dmb:joined"
	EventLeft   = "dmb:left"
	EventJoin   = "dmb:join" // from the client
	EventLeave  = "dmb:leave"
)

// ErrTextNotAllowed answers a client's join or leave of a room its token
// does not allow.
const ErrTextNotAllowed = "not allowed"

// ErrTextTooManyRooms answers a join of a client that is in as many rooms
// as DMB_MAX_CLIENT_ROOMS allows.
const ErrTextTooManyRooms = "too many rooms"

// ReasonNodeLost is the reason of the client_disconnected that a surviving
// node sends for each client of a node that died.
const ReasonNodeLost = "node lost"

// MaxRoomLen bounds a room name.
const MaxRoomLen = 128

// ValidRoom reports whether s is a room name: 1-128 chars of
// [A-Za-z0-9_.:@/-].
func ValidRoom(s string) bool {
	if len(s) == 0 || len(s) > MaxRoomLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '.' || c == ':' || c == '@' || c == '/' || c == '-') {
			return false
		}
	}
	return true
}

// decodeExcept reads the optional "except" member: a list of cids.
func decodeExcept(raw json.RawMessage) ([]string, bool) {
	if len(raw) == 0 || isNull(raw) {
		return nil, true
	}
	var cids []string
	if raw[0] != '[' || json.Unmarshal(raw, &cids) != nil {
		return nil, false
	}
	return cids, true
}

// decodeFlag reads an optional boolean member; absent or null is false.
func decodeFlag(raw json.RawMessage) (v, ok bool) {
	switch string(raw) {
	case "", "null", "false":
		return false, true
	case "true":
		return true, true
	}
	return false, false
}

// AppendRoom appends {"event":"dmb:room","room":...,"data":...}. room is a
// validated name that needs no escaping.
func AppendRoom(dst []byte, room string, data json.RawMessage) []byte {
	dst = append(dst, `{"event":"dmb:room","room":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","data":`...)
	dst = append(dst, orNull(data)...)
	return append(dst, '}')
}

// AppendMembership appends {"event":"dmb:joined","room":...} or dmb:left.
func AppendMembership(dst []byte, joined bool, room string) []byte {
	event := EventLeft
	if joined {
		event = EventJoined
	}
	dst = append(dst, `{"event":"`...)
	dst = append(dst, event...)
	dst = append(dst, `","room":"`...)
	dst = append(dst, room...)
	return append(dst, `"}`...)
}

// AppendRoomEvent appends room_joined or room_left for the backend: a
// client joined or left a room by itself. user only when auth is on.
func AppendRoomEvent(dst []byte, joined bool, cid, room, user string) []byte {
	typ := TypeRoomLeft
	if joined {
		typ = TypeRoomJoined
	}
	dst = append(dst, `{"type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, `","room":"`...)
	dst = append(dst, room...)
	dst = append(dst, '"')
	if user != "" {
		dst = append(dst, `,"user":`...)
		dst = appendString(dst, user)
	}
	return append(dst, '}')
}

// Member is one client in a presence answer.
type Member struct {
	CID  string
	User string
}

// AppendPresence appends one node's answer to a presence request: the
// members, or their count when members is nil. room is "" for the whole
// service. truncated says members was cut to a bound.
func AppendPresence(dst []byte, id json.RawMessage, room, node string, nodes int, count int, members []Member, truncated bool) []byte {
	dst = append(dst, `{"type":"presence"`...)
	if id != nil {
		dst = append(dst, `,"id":`...)
		dst = append(dst, id...)
	}
	if room != "" {
		dst = append(dst, `,"room":"`...)
		dst = append(dst, room...)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, node)
	dst = append(dst, `,"nodes":`...)
	dst = strconv.AppendInt(dst, int64(nodes), 10)
	if members == nil {
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendInt(dst, int64(count), 10)
		return append(dst, '}')
	}
	dst = append(dst, `,"members":[`...)
	for i, m := range members {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"cid":"`...)
		dst = append(dst, m.CID...)
		dst = append(dst, '"')
		if m.User != "" {
			dst = append(dst, `,"user":`...)
			dst = appendString(dst, m.User)
		}
		dst = append(dst, '}')
	}
	dst = append(dst, ']')
	if truncated {
		dst = append(dst, `,"truncated":true`...)
	}
	return append(dst, '}')
}

// AppendNodeLost appends the client_disconnected that a surviving node
// publishes for a client of a node that died.
func AppendNodeLost(dst []byte, cid, node string) []byte {
	dst = AppendClientDisconnected(dst, cid, CloseAbnormal, ReasonNodeLost, true)
	dst = dst[:len(dst)-1]
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, node)
	return append(dst, '}')
}
