package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Backend payload types (PROTOCOL.md, sections 1-5).
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

type registerJSON struct {
	Type    string          `json:"type"`
	Nonce   string          `json:"nonce"`
	Service string          `json:"service"`
	BKID    json.RawMessage `json:"bkid"`
}

// DecodeRegister decodes a register-channel payload. A bk_connect with an
// invalid service decodes with an error but still returns its nonce, so the
// caller can answer with a nack; a bk_connect whose nonce is invalid cannot
// be answered.
func DecodeRegister(b []byte) (RegisterRequest, error) {
	var raw registerJSON
	if err := decodeObject(b, &raw); err != nil {
		return RegisterRequest{}, err
	}
	bkid, bkidOK := decodeBKID(raw.BKID)
	req := RegisterRequest{Type: raw.Type, Nonce: raw.Nonce, Service: raw.Service, BKID: bkid}
	switch raw.Type {
	case TypeConnect:
		if !ValidNonce(raw.Nonce) {
			return req, &PayloadError{Reason: "invalid nonce"}
		}
		if !ValidService(raw.Service) {
			return req, &PayloadError{Reason: "invalid service name"}
		}
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
	case "":
		return req, &PayloadError{Reason: "missing type"}
	default:
		return req, &PayloadError{Reason: "unknown type " + quoteShort(raw.Type)}
	}
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

// Command is a decoded downlink payload from a backend: broadcast, direct or
// kick.
type Command struct {
	Type    string
	CID     string
	User    string
	Data    json.RawMessage
	ReplyTo json.RawMessage
	Reason  string
	ID      json.RawMessage
}

type commandJSON struct {
	Type    string          `json:"type"`
	CID     string          `json:"cid"`
	User    string          `json:"user"`
	Data    json.RawMessage `json:"data"`
	ReplyTo json.RawMessage `json:"reply_to"`
	Reason  string          `json:"reason"`
	ID      json.RawMessage `json:"id"`
}

// DecodeCommand decodes and validates a payload from a backend's downlink
// channel.
func DecodeCommand(b []byte) (Command, error) {
	var raw commandJSON
	if err := decodeObject(b, &raw); err != nil {
		return Command{}, err
	}
	id := raw.ID
	if isNull(id) {
		id = nil
	}
	if id != nil && validID(id) == nil {
		return Command{}, &PayloadError{Reason: "id must be a string or a number"}
	}
	replyTo := raw.ReplyTo
	if isNull(replyTo) {
		replyTo = nil
	}
	if replyTo != nil && validID(replyTo) == nil {
		return Command{}, &PayloadError{Reason: "reply_to must be a string or a number", ID: id}
	}
	cmd := Command{Type: raw.Type, CID: raw.CID, User: raw.User, Data: raw.Data, ReplyTo: replyTo, Reason: raw.Reason, ID: id}
	switch raw.Type {
	case TypeBroadcast:
	case TypeDirect:
		if raw.CID == "" && raw.User == "" {
			return Command{}, &PayloadError{Reason: "direct needs a cid", ID: id}
		}
	case TypeKick:
		if raw.CID == "" {
			return Command{}, &PayloadError{Reason: "kick needs a cid", ID: id}
		}
		cmd.Reason = TruncateReason(raw.Reason)
	case "":
		return Command{}, &PayloadError{Reason: "missing type", ID: id}
	default:
		return Command{}, &PayloadError{Reason: "unknown type " + quoteShort(raw.Type), ID: id}
	}
	return cmd, nil
}

// decodeObject unmarshals a UTF-8 JSON object into v, with the error texts
// backends see.
func decodeObject(b []byte, v any) error {
	if !utf8.Valid(b) {
		return &PayloadError{Reason: "payload is not valid UTF-8"}
	}
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' {
		if json.Valid(t) {
			return &PayloadError{Reason: "payload must be a JSON object"}
		}
		return &PayloadError{Reason: "invalid JSON"}
	}
	if err := json.Unmarshal(t, v); err != nil {
		if _, ok := err.(*json.UnmarshalTypeError); ok {
			return &PayloadError{Reason: "a field has the wrong type: " + err.Error()}
		}
		return &PayloadError{Reason: "invalid JSON"}
	}
	return nil
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

// AppendClientConnected appends the client_connected event; user only when
// auth is on.
func AppendClientConnected(dst []byte, cid, service, remote, user string) []byte {
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
	return append(dst, '}')
}

// AppendClientDisconnected appends the client_disconnected event.
func AppendClientDisconnected(dst []byte, cid string, code int, reason string) []byte {
	dst = append(dst, `{"type":"client_disconnected","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, `","code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, reason)
	return append(dst, '}')
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
