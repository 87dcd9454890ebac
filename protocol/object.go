package protocol

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// member is one member of a JSON object: its name and its raw value, a
// slice of the input.
type member struct {
	name  string
	value json.RawMessage
}

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
		if o[i].name == name {
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
// members; the string is what was wrong, for the peer.
func decodeObject(b []byte, what string) (object, string) {
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
	o, ok := od.members(b)
	if !ok {
		return nil, "invalid JSON"
	}
	return o, ""
}

// members reads one object, and nothing after it, from the decoder over b.
func (od *objectDecoder) members(b []byte) (object, bool) {
	d := od.d
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '{' {
		return nil, false
	}
	var o object
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil || tok.Kind() != '"' {
			return nil, false
		}
		name := tok.String() // before the next call voids the token
		v, err := d.ReadValue()
		if err != nil {
			return nil, false
		}
		end := int(d.InputOffset())
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
		return string(raw[1 : len(raw)-1]), true, true
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
