package protocol_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// Helpers shared by the unit and fuzz tests. They judge the decoders against
// an independent reading of the wire contract: a JSON object's members looked
// up by their exact key, numbers kept as written.

// decodeFields unmarshals one JSON object with exact numbers, failing the
// test when b is not one.
func decodeFields(t *testing.T, b []byte) map[string]any {
	t.Helper()
	if !json.Valid(b) {
		t.Fatalf("not valid JSON: %s", b)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil || m == nil {
		t.Fatalf("not a JSON object: %s (%v)", b, err)
	}
	return m
}

// checkEncoded asserts that an encoder wrote exactly want, that it is valid
// JSON and that it reads back as fields.
func checkEncoded(t *testing.T, got []byte, want string, fields map[string]any) {
	t.Helper()
	if string(got) != want {
		t.Errorf("bytes:\n got %s\nwant %s", got, want)
	}
	if !json.Valid(got) {
		t.Fatalf("not valid JSON: %s", got)
	}
	if m := decodeFields(t, got); !reflect.DeepEqual(m, fields) {
		t.Errorf("fields:\n got %#v\nwant %#v", m, fields)
	}
}

// isJSONStringOrNumber reports whether b is exactly one JSON string or
// number, the only values an id or reply_to may have.
func isJSONStringOrNumber(b []byte) bool {
	if !json.Valid(b) {
		return false
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return false
	}
	switch v.(type) {
	case string, json.Number:
		return true
	}
	return false
}

// members returns the members of a JSON object by exact key, the last of
// duplicate keys winning, or false when b is not a JSON object.
func members(b []byte) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil || m == nil {
		return nil, false
	}
	return m, true
}

// stringMember returns the member key of m when it is a JSON string.
func stringMember(m map[string]json.RawMessage, key string) (string, bool) {
	raw, ok := m[key]
	if !ok || len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// idMember returns the member key of m as the decoders should carry it: nil
// when absent or null.
func idMember(m map[string]json.RawMessage, key string) json.RawMessage {
	raw, ok := m[key]
	if !ok || string(raw) == "null" {
		return nil
	}
	return raw
}

// orNull is how the encoders write absent data.
func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}

// sameRaw reports whether two raw values are the same bytes and both absent
// or both present.
func sameRaw(a, b json.RawMessage) bool {
	return (a == nil) == (b == nil) && bytes.Equal(a, b)
}
