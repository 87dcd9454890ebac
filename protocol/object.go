package protocol

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// member is one member of a JSON object: its name and its raw value, both
// slices of the input (the name unescaped into its own bytes in the rare
// case it has escapes).
type member struct {
	name  []byte
	value json.RawMessage
}

// membersInline is how many members an object holds before its slice grows
// onto the heap: every member DMB reads fits, and a few unknown ones.
const membersInline = 8

// object is a JSON object's members, read by their exact names.
// encoding/json matches struct fields regardless of case, so that "Data" or
// "TYPE" would pass for "data" and "type"; the contract names fields
// exactly and ignores every other member, so peer input is split into
// members first and each field is read by its exact name. When a name
// occurs twice, the last one counts, as with encoding/json.
type object []member

// get returns the raw value of the member name, the last if it repeats.
func (o object) get(name string) (json.RawMessage, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if string(o[i].name) == name {
			return o[i].value, true
		}
	}
	return nil, false
}

// objectDecoder reads the members of one object with jsontext (the
// tokenizer of the Go team's JSON v2 work): no reflection and no map, and
// the raw values are slices of the input. Decoders are pooled. Duplicate
// names and escaped lone surrogates ("\ud800") are accepted, as
// encoding/json accepts them; raw UTF-8 is checked before.
type objectDecoder struct {
	r bytes.Reader
	d *jsontext.Decoder
}

var objectDecoders = sync.Pool{New: func() any {
	od := &objectDecoder{}
	od.d = jsontext.NewDecoder(&od.r, jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	return od
}}

// decodeObject checks that b is one UTF-8 JSON object and returns its
// members, appended to buf; the string is what was wrong, for the peer. A
// caller passes a buf of membersInline on its stack, so that decoding a
// frame allocates nothing for the members.
func decodeObject(b []byte, what string, buf object) (object, string) {
	if !utf8.Valid(b) {
		return nil, what + " is not valid UTF-8"
	}
	t := trimJSONSpace(b)
	if len(t) == 0 || t[0] != '{' {
		if json.Valid(t) && len(t) > 0 {
			return nil, what + " must be a JSON object"
		}
		return nil, "invalid JSON"
	}
	od := objectDecoders.Get().(*objectDecoder)
	defer objectDecoders.Put(od)
	od.r.Reset(b)
	od.d.Reset(&od.r, jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	o, ok := od.members(b, buf)
	if !ok {
		return nil, "invalid JSON"
	}
	return o, ""
}

// members reads one object, and nothing after it, from the decoder over b,
// and appends its members to o. A name is read as a raw value, not a token,
// so that it is a slice of b and not a new string.
func (od *objectDecoder) members(b []byte, o object) (object, bool) {
	d := od.d
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '{' {
		return nil, false
	}
	for d.PeekKind() != '}' {
		if d.PeekKind() != '"' {
			return nil, false
		}
		n, err := d.ReadValue()
		if err != nil {
			return nil, false
		}
		end := int(d.InputOffset())
		name := b[end-len(n)+1 : end-1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 {
			var s string
			if json.Unmarshal(n, &s) != nil {
				return nil, false
			}
			name = []byte(s)
		}
		v, err := d.ReadValue()
		if err != nil {
			return nil, false
		}
		end = int(d.InputOffset())
		o = append(o, member{name: name, value: b[end-len(v) : end : end]})
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		return nil, false
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, false // something after the object
	}
	return o, true
}

// trimJSONSpace trims the four whitespace characters JSON allows; others,
// such as form feed or U+00A0, leave the input invalid.
func trimJSONSpace(b []byte) []byte {
	return bytes.Trim(b, " \t\r\n")
}

// raw returns a member's raw value, nil when absent.
func (o object) raw(name string) json.RawMessage {
	v, _ := o.get(name)
	return v
}

// str reads a string member. present is false when the member is absent or
// null; ok is false when it is there but not a string.
func (o object) str(name string) (s string, present, ok bool) {
	raw, found := o.get(name)
	if !found || isNull(raw) {
		return "", false, true
	}
	if raw[0] != '"' {
		return "", true, false
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		// A validated string without escapes is its own text.
		return intern(raw[1 : len(raw)-1]), true, true
	}
	if json.Unmarshal(raw, &s) != nil {
		return "", true, false
	}
	return s, true, true
}

// id reads an id-like member (id, reply_to): nil when absent or null; ok is
// false when it is neither a JSON string nor a number.
func (o object) id(name string) (json.RawMessage, bool) {
	raw, found := o.get(name)
	if !found || isNull(raw) {
		return nil, true
	}
	if validID(raw) == nil {
		return nil, false
	}
	return raw, true
}

// intern returns the string of b, without allocating when it is one of the
// event and type names that nearly every frame and payload carries.
func intern(b []byte) string {
	switch string(b) { // compiled to comparisons, no conversion
	case EventMessage:
		return EventMessage
	case TypeBroadcast:
		return TypeBroadcast
	case TypeDirect:
		return TypeDirect
	case TypeKick:
		return TypeKick
	case TypeConnect:
		return TypeConnect
	case TypeDisconnect:
		return TypeDisconnect
	}
	return string(b)
}
