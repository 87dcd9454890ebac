package broker

import (
	"errors"

	"github.com/go-json-experiment/json"
)

// EventHello is the first line of a TCP client (docs/protocol.md, section
// 12): what a WebSocket client says in its URL.
const EventHello = "dmb:hello"

// helloLine is a TCP client's first line:
//
//	{"event":"dmb:hello","service":"chat","token":"...","resume":"...","offset":"..."}
//
// token, resume and offset may be left out; other members are ignored.
type helloLine struct {
	Event   string `json:"event"`
	Service string `json:"service"`
	Token   string `json:"token"`
	Resume  string `json:"resume"`
	Offset  string `json:"offset"`
}

// errBadHello is what decodeHello says of any line that is not a hello; the
// client is closed with 1008 and this reason.
var errBadHello = errors.New(`invalid hello: want {"event":"dmb:hello","service":"..."}`)

// decodeHello decodes a TCP client's first line: one JSON object, valid
// UTF-8, with no member twice, whose event is dmb:hello and whose members
// are strings. Whether the service exists is admission's to say (4004).
func decodeHello(line []byte) (service string, h Hello, err error) {
	var v helloLine
	if json.Unmarshal(line, &v) != nil || v.Event != EventHello || v.Service == "" {
		return "", Hello{}, errBadHello
	}
	return v.Service, Hello{Token: v.Token, Resume: v.Resume, Offset: v.Offset}, nil
}
