package protocol

import (
	"encoding/json"
	"strconv"
)

// Client events (docs/protocol.md, sections 3-5).
const (
	EventMessage   = "dmb:message"
	EventConnected = "dmb:connected"
	EventAck       = "dmb:ack"
	EventError     = "dmb:error"
	EventBroadcast = "dmb:broadcast"
	EventDirect    = "dmb:direct"
)

// Error texts that clients and backends can match on.
const (
	ErrTextBackendUnavailable = "backend unavailable"
	ErrTextBrokerUnavailable  = "broker unavailable"
	// ErrTextRateLimited answers a frame sent faster than DMB_CLIENT_RATE
	// allows: it was not passed on.
	ErrTextRateLimited = "rate limited"
	// ErrTextBackendBusy answers a frame over what the node may publish to
	// its backend (DMB_BACKEND_RATE): it was not passed on.
	ErrTextBackendBusy = "backend busy"
)

// ClientFrame is a decoded frame from a browser. Data and ID are the raw JSON
// bytes the client sent; ID is nil when the frame had none.
type ClientFrame struct {
	Event string
	Data  json.RawMessage
	ID    json.RawMessage
	Room  string // dmb:join, dmb:leave
}

// FrameError is a client frame that DMB refuses. ID is the frame's id when
// one could be read, so that the error can be matched to the request.
type FrameError struct {
	Reason string
	ID     json.RawMessage
}

func (e *FrameError) Error() string { return e.Reason }

// DecodeClientFrame decodes and validates one text frame from a browser.
// Unknown members are ignored. A missing "data" is carried as null.
func DecodeClientFrame(b []byte) (ClientFrame, error) {
	var buf [membersInline]member
	o, bad := decodeObject(b, "frame", buf[:0])
	if bad != "" {
		return ClientFrame{}, &FrameError{Reason: bad}
	}
	id, ok := o.id("id")
	if !ok {
		return ClientFrame{}, &FrameError{Reason: "id must be a string or a number"}
	}
	event, present, ok := o.str("event")
	switch {
	case !ok:
		return ClientFrame{}, &FrameError{Reason: "event must be a string", ID: id}
	case !present:
		return ClientFrame{}, &FrameError{Reason: "missing event", ID: id}
	case event == EventJoin || event == EventLeave:
		room, _, ok := o.str("room")
		if !ok || !ValidRoom(room) {
			return ClientFrame{}, &FrameError{Reason: "invalid room name", ID: id}
		}
		return ClientFrame{Event: event, ID: id, Room: room}, nil
	case event != EventMessage:
		return ClientFrame{}, &FrameError{Reason: "unknown event " + quoteShort(event), ID: id}
	}
	data := o.raw("data")
	if data == nil {
		data = null
	}
	return ClientFrame{Event: event, Data: data, ID: id}, nil
}

var null = json.RawMessage("null")

func isNull(b json.RawMessage) bool { return len(b) == 4 && string(b) == "null" }

// validID returns id when it is a JSON string or number, else nil.
func validID(id json.RawMessage) json.RawMessage {
	if len(id) == 0 {
		return nil
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return id
	}
	return nil
}

// quoteShort quotes a peer-supplied string for an error text, cut to a
// length that keeps error frames small.
func quoteShort(s string) string {
	const max = 64
	if len(s) > max {
		s = truncateUTF8(s, max) + "..."
	}
	b, _ := json.Marshal(s)
	return string(b)
}

// AppendConnected appends {"event":"dmb:connected","cid":...,"service":...}.
// cid and service are DMB-validated names that need no escaping.
func AppendConnected(dst []byte, c Connected) []byte {
	dst = append(dst, `{"event":"dmb:connected","cid":"`...)
	dst = append(dst, c.CID...)
	dst = append(dst, `","service":"`...)
	dst = append(dst, c.Service...)
	dst = append(dst, '"')
	if c.Session != "" {
		dst = append(dst, `,"session":"`...)
		dst = append(dst, c.Session...) // base64url and dots: nothing to escape
		dst = append(dst, `","resumed":`...)
		dst = strconv.AppendBool(dst, c.Resumed)
		if c.Resumed {
			dst = append(dst, `,"recovered":`...)
			dst = strconv.AppendBool(dst, c.Recovered)
		}
	}
	return append(dst, '}')
}

// AppendBroadcast appends {"event":"dmb:broadcast","data":...}.
func AppendBroadcast(dst []byte, data json.RawMessage) []byte {
	dst = append(dst, `{"event":"dmb:broadcast","data":`...)
	dst = append(dst, orNull(data)...)
	return append(dst, '}')
}

// AppendDirect appends {"event":"dmb:direct","data":...,"reply_to":...};
// reply_to only when given, and "more":true for a partial answer to it.
func AppendDirect(dst []byte, data, replyTo json.RawMessage, more bool) []byte {
	dst = append(dst, `{"event":"dmb:direct","data":`...)
	dst = append(dst, orNull(data)...)
	if replyTo != nil {
		dst = append(dst, `,"reply_to":`...)
		dst = append(dst, replyTo...)
		if more {
			dst = append(dst, `,"more":true`...)
		}
	}
	return append(dst, '}')
}

// AppendAck appends {"event":"dmb:ack","id":...}.
func AppendAck(dst []byte, id json.RawMessage) []byte {
	dst = append(dst, `{"event":"dmb:ack","id":`...)
	dst = append(dst, id...)
	return append(dst, '}')
}

// AckSize is the length of what AppendAck appends.
func AckSize(id json.RawMessage) int { return len(`{"event":"dmb:ack","id":}`) + len(id) }

// AppendError appends {"event":"dmb:error","id":...,"error":...}; id only
// when given.
func AppendError(dst []byte, id json.RawMessage, text string) []byte {
	dst = append(dst, `{"event":"dmb:error",`...)
	if id != nil {
		dst = append(dst, `"id":`...)
		dst = append(dst, id...)
		dst = append(dst, ',')
	}
	dst = append(dst, `"error":`...)
	dst = appendString(dst, text)
	return append(dst, '}')
}

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return null
	}
	return b
}

// appendString appends s as a JSON string.
func appendString(dst []byte, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil { // unreachable: strings always marshal
		return append(dst, `""`...)
	}
	return append(dst, b...)
}
