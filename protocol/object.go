package protocol

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// object is a JSON object's members by their exact names. encoding/json
// matches struct fields regardless of case, so that "Data" or "TYPE" would
// pass for "data" and "type"; the contract names fields exactly and ignores
// every other member, so peer input is split into members first and each
// field is read by its exact name.
type object map[string]json.RawMessage

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
	var o object
	if err := json.Unmarshal(t, &o); err != nil {
		return nil, "invalid JSON"
	}
	return o, ""
}

// trimJSONSpace trims the four whitespace characters JSON allows; others,
// such as form feed or U+00A0, leave the input invalid.
func trimJSONSpace(b []byte) []byte {
	return bytes.Trim(b, " \t\r\n")
}

// str reads a string member. present is false when the member is absent or
// null; ok is false when it is there but not a string.
func (o object) str(name string) (s string, present, ok bool) {
	raw, found := o[name]
	if !found || isNull(raw) {
		return "", false, true
	}
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", true, false
	}
	return s, true, true
}

// id reads an id-like member (id, reply_to): nil when absent or null; ok is
// false when it is neither a JSON string nor a number.
func (o object) id(name string) (json.RawMessage, bool) {
	raw, found := o[name]
	if !found || isNull(raw) {
		return nil, true
	}
	if validID(raw) == nil {
		return nil, false
	}
	return raw, true
}
