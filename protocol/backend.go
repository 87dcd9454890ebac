package protocol

import (
	"encoding/json"
	"strconv"
)

// Backend payload types (docs/protocol.md, sections 1-5).
const (
	TypeConnect            = "bk_connect"
	TypeDisconnect         = "bk_disconnect"
	TypeConnectAck         = "bk_connect_ack"
	TypeConnectNack        = "bk_connect_nack"
	TypeBroadcast          = "broadcast"
	TypeDirect             = "direct"
	TypeKick               = "kick"
	TypeClientConnected    = "client_connected"
	TypeClientDisconnected = "client_disconnected"
	TypeMessage            = "message"
	TypeMessageAck         = "bk_message_ack"
	TypeError              = "error"
	TypeDisconnected       = "bk_disconnected" // 1.1: DMB took the bkid out of the live view after a leave
)

// PayloadError is a backend payload that DMB drops. ID is the payload's id
// when one could be read.
type PayloadError struct {
	Reason string
	ID     json.RawMessage
}

func (e *PayloadError) Error() string { return e.Reason }

// RegisterRequest is a decoded payload from the register channel: a
// bk_connect or a bk_disconnect.
type RegisterRequest struct {
	Type    string
	Nonce   string // bk_connect
	Service string // bk_connect
	BKID    string // bk_connect (optional) and bk_disconnect
}

// DecodeRegister decodes a register-channel payload. A bk_connect that is
// refused still returns its type and nonce when they could be read, so the
// caller can answer with a nack; a bk_connect whose nonce is invalid cannot
// be answered. A bk_disconnect that is refused returns its bkid when it
// could be read, so the backend can be told.
func DecodeRegister(b []byte) (RegisterRequest, error) {
	var buf [membersInline]member
	o, bad := decodeObject(b, "payload", buf[:0])
	if bad != "" {
		return RegisterRequest{}, &PayloadError{Reason: bad}
	}
	typ, _, _ := o.str("type")
	nonce, _, _ := o.str("nonce")
	bkid, bkidOK := decodeBKID(o.raw("bkid"))
	req := RegisterRequest{Type: typ, Nonce: nonce, BKID: bkid}
	switch typ {
	case TypeConnect:
		if !ValidNonce(nonce) {
			return req, &PayloadError{Reason: "invalid nonce"}
		}
		service, _, ok := o.str("service")
		if !ok || !ValidService(service) {
			return req, &PayloadError{Reason: "invalid service name"}
		}
		req.Service = service
		// An unusable bkid on bk_connect is not an error: DMB assigns a new one.
		if !bkidOK {
			req.BKID = ""
		}
		return req, nil
	case TypeDisconnect:
		if !bkidOK || bkid == "" {
			return req, &PayloadError{Reason: "invalid bkid"}
		}
		return req, nil
	}
	if _, _, ok := o.str("type"); !ok {
		return req, &PayloadError{Reason: "type must be a string"}
	}
	if typ == "" {
		return req, &PayloadError{Reason: "missing type"}
	}
	return req, &PayloadError{Reason: "unknown type " + quoteShort(typ)}
}

// decodeBKID accepts a bkid written as a decimal string or, leniently, as a
// JSON number.
func decodeBKID(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || isNull(raw) {
		return "", true
	}
	var s string
	if raw[0] == '"' {
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
	} else {
		s = string(raw)
	}
	if !ValidBKID(s) {
		return "", false
	}
	return s, true
}

// Command is a decoded downlink payload from a backend: broadcast, direct,
// kick, and (1.1) join, leave, room and presence.
type Command struct {
	Type    string
	CID     string
	User    string
	Data    json.RawMessage
	ReplyTo json.RawMessage
	Reason  string
	ID      json.RawMessage
	Room    string   // join, leave, room, presence ("" there: the service)
	Except  []string // broadcast, room: cids left out
	More    bool     // direct with reply_to: a partial answer
	// CountOnly asks presence for a count instead of the members.
	CountOnly bool
	// Offset is the message's position in its backend's history, "ms-seq",
	// when it was published recoverably (section 11); "" otherwise, and
	// when it is not a position.
	Offset string
	Node   string // resumed: the node that holds the session now
}

// DecodeCommand decodes and validates a payload from a backend's downlink
// channel. Unknown members are ignored.
func DecodeCommand(b []byte) (Command, error) {
	var buf [membersInline]member
	o, bad := decodeObject(b, "payload", buf[:0])
	if bad != "" {
		return Command{}, &PayloadError{Reason: bad}
	}
	id, ok := o.id("id")
	if !ok {
		return Command{}, &PayloadError{Reason: "id must be a string or a number"}
	}
	fail := func(reason string) (Command, error) { return Command{}, &PayloadError{Reason: reason, ID: id} }
	replyTo, ok := o.id("reply_to")
	if !ok {
		return fail("reply_to must be a string or a number")
	}
	cmd := Command{Data: o.raw("data"), ReplyTo: replyTo, ID: id}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"type", &cmd.Type}, {"cid", &cmd.CID}, {"user", &cmd.User}, {"reason", &cmd.Reason}, {"room", &cmd.Room}} {
		v, _, ok := o.str(f.name)
		if !ok {
			return fail(f.name + " must be a string")
		}
		*f.dst = v
	}
	if cmd.Type == TypeResumed {
		if cmd.Node, _, ok = o.str("node"); !ok {
			return fail("node must be a string")
		}
	}
	if off, _, ok := o.str("offset"); ok && validPosition(off) {
		cmd.Offset = off // else not one DMB's function wrote: the message is live-only
	}
	if cmd.Type == TypeBroadcast || cmd.Type == TypeRoom {
		if cmd.Except, ok = decodeExcept(o.raw("except")); !ok {
			return fail("except must be a list of cids")
		}
	}
	switch cmd.Type {
	case TypeBroadcast:
	case TypeDirect:
		if cmd.CID == "" && cmd.User == "" {
			return fail("direct needs a cid or a user")
		}
		if cmd.More, ok = decodeFlag(o.raw("more")); !ok {
			return fail("more must be true or false")
		}
		cmd.More = cmd.More && replyTo != nil // progress answers a request
	case TypeJoin, TypeLeave:
		if !ValidRoom(cmd.Room) {
			return fail("invalid room name")
		}
		if cmd.CID == "" && cmd.User == "" {
			return fail(cmd.Type + " needs a cid or a user")
		}
	case TypeRoom:
		if !ValidRoom(cmd.Room) {
			return fail("invalid room name")
		}
	case TypePresence:
		if cmd.Room != "" && !ValidRoom(cmd.Room) {
			return fail("invalid room name")
		}
		if cmd.CountOnly, ok = decodeFlag(o.raw("count_only")); !ok {
			return fail("count_only must be true or false")
		}
	case TypeKick, TypeResumed:
		if cmd.CID == "" {
			return fail(cmd.Type + " needs a cid")
		}
		cmd.Reason = TruncateReason(cmd.Reason)
	case "":
		return fail("missing type")
	default:
		return fail("unknown type " + quoteShort(cmd.Type))
	}
	return cmd, nil
}

// ConnectAck returns the bk_connect_ack payload.
func ConnectAck(ch Channels, nonce, bkid, service string) []byte {
	b := []byte(`{"type":"bk_connect_ack","nonce":"`)
	b = append(b, nonce...)
	b = append(b, `","bkid":"`...)
	b = append(b, bkid...)
	b = append(b, `","service":"`...)
	b = append(b, service...)
	b = append(b, `","downlink":`...)
	b = appendString(b, ch.Downlink(bkid))
	b = append(b, `,"uplink":`...)
	b = appendString(b, ch.Uplink(bkid))
	return append(b, '}')
}

// ConnectNack returns the bk_connect_nack payload.
func ConnectNack(nonce, reason string) []byte {
	b := []byte(`{"type":"bk_connect_nack","nonce":"`)
	b = append(b, nonce...)
	b = append(b, `","error":`...)
	b = appendString(b, reason)
	return append(b, '}')
}

// AppendDisconnected appends the bk_disconnected event that tells a
// backend its bkid was marked gone by a bk_disconnect, which anyone on
// Redis may have sent.
func AppendDisconnected(dst []byte, bkid string) []byte {
	dst = append(dst, `{"type":"bk_disconnected","bkid":`...)
	dst = appendString(dst, bkid)
	return append(dst, '}')
}

// AppendClientConnected appends the client_connected event; user only when
// auth is on; resumed only when true, with the rooms the resumed session
// is in.
func AppendClientConnected(dst []byte, cid, service, remote, user string, resumed bool, rooms []string) []byte {
	dst = append(dst, `{"type":"client_connected","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, `","service":"`...)
	dst = append(dst, service...)
	dst = append(dst, `","remote":`...)
	dst = appendString(dst, remote)
	if user != "" {
		dst = append(dst, `,"user":`...)
		dst = appendString(dst, user)
	}
	if resumed {
		dst = append(dst, `,"resumed":true,"rooms":[`...)
		for i, r := range rooms {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, r)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// AppendClientDisconnected appends the client_disconnected event;
// resumable says the session may be resumed (section 11).
func AppendClientDisconnected(dst []byte, cid string, code int, reason string, resumable bool) []byte {
	dst = append(dst, `{"type":"client_disconnected","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, `","code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, reason)
	dst = append(dst, `,"resumable":`...)
	dst = strconv.AppendBool(dst, resumable)
	return append(dst, '}')
}

// MessageSize is the length of what AppendMessage appends, when user needs
// no escaping (else a little more), so that a caller can allocate once.
func MessageSize(cid, user string, data, id json.RawMessage) int {
	n := len(`{"type":"message","cid":"","data":}`) + len(cid) + len(orNull(data))
	if user != "" {
		n += len(`,"user":""`) + len(user)
	}
	if id != nil {
		n += len(`,"id":`) + len(id)
	}
	return n
}

// AppendMessage appends the uplink message event; id only when given, user
// only when auth is on.
func AppendMessage(dst []byte, cid, user string, data, id json.RawMessage) []byte {
	dst = append(dst, `{"type":"message","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, '"')
	if user != "" {
		dst = append(dst, `,"user":`...)
		dst = appendString(dst, user)
	}
	dst = append(dst, `,"data":`...)
	dst = append(dst, orNull(data)...)
	if id != nil {
		dst = append(dst, `,"id":`...)
		dst = append(dst, id...)
	}
	return append(dst, '}')
}

// AppendMessageAck appends the per-node bk_message_ack.
func AppendMessageAck(dst []byte, id json.RawMessage, node string, delivered int) []byte {
	dst = append(dst, `{"type":"bk_message_ack","id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, node)
	dst = append(dst, `,"delivered":`...)
	dst = strconv.AppendInt(dst, int64(delivered), 10)
	return append(dst, '}')
}

// AppendBackendError appends the error event that reports a dropped payload
// to its backend; id only when one could be read. Every node that drops the
// payload reports it, so the event names the node.
func AppendBackendError(dst []byte, reason string, id json.RawMessage, node string) []byte {
	dst = append(dst, `{"type":"error","error":`...)
	dst = appendString(dst, reason)
	if id != nil {
		dst = append(dst, `,"id":`...)
		dst = append(dst, id...)
	}
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, node)
	return append(dst, '}')
}
