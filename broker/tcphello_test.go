package broker

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

func TestDecodeHello(t *testing.T) {
	service, h, err := decodeHello([]byte(`{"event":"dmb:hello","service":"chat","token":"t","resume":"r","offset":"42:1-0","v":2}`))
	if err != nil || service != "chat" || h != (Hello{Token: "t", Resume: "r", Offset: "42:1-0"}) {
		t.Fatalf("decodeHello = %q, %+v, %v", service, h, err)
	}
	if service, h, err := decodeHello([]byte(` { "service" : "chat" , "event" : "dmb:hello" } `)); err != nil || service != "chat" || h != (Hello{}) {
		t.Fatalf("a hello with only a service = %q, %+v, %v", service, h, err)
	}
	for _, bad := range []string{
		``,
		`hello`,
		`{"event":"dmb:hello"}`,
		`{"event":"dmb:hello","service":""}`,
		`{"event":"dmb:message","service":"chat"}`,
		`{"service":"chat"}`,
		`{"event":"dmb:hello","service":"chat","token":7}`,
		`{"event":"dmb:hello","service":"chat","service":"other"}`,
		`{"Event":"dmb:hello","Service":"chat"}`,
		`[{"event":"dmb:hello","service":"chat"}]`,
		`{"event":"dmb:hello","service":"chat"} {}`,
		"{\"event\":\"dmb:hello\",\"service\":\"ch\xffat\"}",
	} {
		if _, _, err := decodeHello([]byte(bad)); err != errBadHello {
			t.Errorf("decodeHello(%q) = %v, want errBadHello", bad, err)
		}
	}
}

// FuzzDecodeHello checks that no first line crashes the hello decoder, and
// that what it accepts is a JSON object of valid UTF-8 whose event is
// dmb:hello, with a service, and that its fields say back what the line
// said. Seeds are in testdata/fuzz/FuzzDecodeHello.
func FuzzDecodeHello(f *testing.F) {
	for _, seed := range []string{
		`{"event":"dmb:hello","service":"chat"}`,
		`{"event":"dmb:hello","service":"chat","token":"eyJ...","resume":"s.1","offset":"42:1733380000000-0"}`,
		`{"event":"dmb:hello","service":"chat","token":null}`,
		`{"event":"dmb:hello","service":"\u0063hat"}`,
		`{"event":"dmb:message","data":1}`,
		`{"event":"dmb:hello","service":"chat"`,
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		service, h, err := decodeHello(line)
		if err != nil {
			if err != errBadHello || service != "" || h != (Hello{}) {
				t.Fatalf("refused with %v, %q, %+v", err, service, h)
			}
			return
		}
		if !utf8.Valid(line) || !json.Valid(line) {
			t.Fatalf("accepted %q, which is not valid JSON", line)
		}
		var back map[string]any
		if err := json.Unmarshal(line, &back); err != nil {
			t.Fatalf("accepted %q, which is not an object: %v", line, err)
		}
		if back["event"] != EventHello || back["service"] != service || service == "" {
			t.Fatalf("accepted %q as %q, %+v", line, service, h)
		}
		for name, got := range map[string]string{"token": h.Token, "resume": h.Resume, "offset": h.Offset} {
			if v, ok := back[name]; ok && v != nil && v != got {
				t.Fatalf("%s of %q = %q, want %v", name, line, got, v)
			}
		}
	})
}
