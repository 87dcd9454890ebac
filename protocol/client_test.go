package protocol_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

func TestClientMessageFrameDecodes(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		data, id string // raw JSON; id "" for none
	}{
		{"section 4 example", `{"event":"dmb:message","data":{"text":"hi"},"id":7}`, `{"text":"hi"}`, `7`},
		{"without id", `{"event":"dmb:message","data":{"text":"hi"}}`, `{"text":"hi"}`, ``},
		{"string id", `{"event":"dmb:message","data":1,"id":"r-1"}`, `1`, `"r-1"`},
		{"empty string id", `{"event":"dmb:message","data":1,"id":""}`, `1`, `""`},
		{"negative id", `{"event":"dmb:message","data":1,"id":-7}`, `1`, `-7`},
		{"fractional id", `{"event":"dmb:message","data":1,"id":1.50}`, `1`, `1.50`},
		{"huge id", `{"event":"dmb:message","data":1,"id":123456789012345678901234567890}`, `1`, `123456789012345678901234567890`},
		{"overflowing id", `{"event":"dmb:message","data":1,"id":1e999}`, `1`, `1e999`},
		{"escaped string id", `{"event":"dmb:message","data":1,"id":"\u0041\n"}`, `1`, `"\u0041\n"`},
		{"id first", `{"id":7,"data":2,"event":"dmb:message"}`, `2`, `7`},
		{"null id is no id", `{"event":"dmb:message","data":1,"id":null}`, `1`, ``},
		{"string data", `{"event":"dmb:message","data":"hi"}`, `"hi"`, ``},
		{"array data", `{"event":"dmb:message","data":[1,"a",null,{}]}`, `[1,"a",null,{}]`, ``},
		{"false data", `{"event":"dmb:message","data":false}`, `false`, ``},
		{"null data", `{"event":"dmb:message","data":null}`, `null`, ``},
		{"nested data", `{"event":"dmb:message","data":{"a":{"b":{"c":[[[{"d":[]}]]]}}}}`, `{"a":{"b":{"c":[[[{"d":[]}]]]}}}`, ``},
		{"JSON whitespace around the frame", " \t\r\n{\"event\":\"dmb:message\",\"data\":1}\n", `1`, ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := protocol.DecodeClientFrame([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeClientFrame(%s): %v", tt.in, err)
			}
			if f.Event != protocol.EventMessage {
				t.Errorf("Event = %q, want %q", f.Event, protocol.EventMessage)
			}
			if string(f.Data) != tt.data {
				t.Errorf("Data = %s, want %s", f.Data, tt.data)
			}
			if tt.id == "" && f.ID != nil {
				t.Errorf("ID = %s, want none", f.ID)
			}
			if string(f.ID) != tt.id {
				t.Errorf("ID = %s, want %s", f.ID, tt.id)
			}
		})
	}
}

func TestClientMessageWithoutDataCarriesNull(t *testing.T) {
	for _, in := range []string{`{"event":"dmb:message"}`, `{"event":"dmb:message","id":7}`} {
		f, err := protocol.DecodeClientFrame([]byte(in))
		if err != nil {
			t.Fatalf("DecodeClientFrame(%s): %v", in, err)
		}
		if string(f.Data) != "null" {
			t.Errorf("DecodeClientFrame(%s).Data = %q, want null", in, f.Data)
		}
	}
}

func TestClientMessageDataAndIDAreCarriedByteForByte(t *testing.T) {
	const (
		data = "{ \"text\" : \"caf\\u00e9 \\\"q\\\" \\n\" ,\n\t\"n\" : [ 1.50 , -0 , 1E+2 , 123456789012345678901234567890 ] , \"e\" : { } }"
		id   = `"x \u0079 \/"`
	)
	in := `{ "event" : "dmb:message" , "data" :  ` + data + `  , "id" :  ` + id + ` }`
	f, err := protocol.DecodeClientFrame([]byte(in))
	if err != nil {
		t.Fatalf("DecodeClientFrame(%s): %v", in, err)
	}
	if string(f.Data) != data {
		t.Errorf("Data:\n got %s\nwant %s", f.Data, data)
	}
	if string(f.ID) != id {
		t.Errorf("ID = %s, want %s", f.ID, id)
	}
	// And on to the backend and back to the client, still untouched.
	msg := protocol.AppendMessage(nil, "c1", "", f.Data, f.ID)
	if want := `{"type":"message","cid":"c1","data":` + data + `,"id":` + id + `}`; string(msg) != want {
		t.Errorf("AppendMessage:\n got %s\nwant %s", msg, want)
	}
	if !json.Valid(msg) {
		t.Errorf("AppendMessage wrote invalid JSON: %s", msg)
	}
	if ack := protocol.AppendAck(nil, f.ID); string(ack) != `{"event":"dmb:ack","id":`+id+`}` {
		t.Errorf("AppendAck = %s", ack)
	}
}

func TestClientFrameUnknownFieldsAreIgnored(t *testing.T) {
	tests := []string{
		`{"event":"dmb:message","data":1,"id":7,"v":2}`,
		`{"v":2,"event":"dmb:message","data":1,"id":7}`,
		`{"event":"dmb:message","data":1,"id":7,"extra":{"event":"dmb:ack","data":2,"id":{}}}`,
		`{"event":"dmb:message","data":1,"id":7,"x":null,"y":[true,false],"z":1e999}`,
		`{"event":"dmb:message","data":1,"id":7,"":"", "event2":"dmb:ack", "dmb:message":0}`,
	}
	for _, in := range tests {
		f, err := protocol.DecodeClientFrame([]byte(in))
		if err != nil {
			t.Errorf("DecodeClientFrame(%s): %v", in, err)
			continue
		}
		if f.Event != protocol.EventMessage || string(f.Data) != "1" || string(f.ID) != "7" {
			t.Errorf("DecodeClientFrame(%s) = %q, %s, %s; want dmb:message, 1, 7", in, f.Event, f.Data, f.ID)
		}
	}
}

func TestBadClientFrameIsRefusedWithWhatWasWrongAndTheIDWhenReadable(t *testing.T) {
	long := strings.Repeat("e", 100)
	tests := []struct {
		name   string
		in     string
		reason string
		id     string // "" for none
	}{
		{"invalid UTF-8", "\xff", "frame is not valid UTF-8", ""},
		{"invalid UTF-8 in data", "{\"event\":\"dmb:message\",\"data\":\"\xc3\",\"id\":7}", "frame is not valid UTF-8", ""},
		{"surrogate half encoded in UTF-8", "{\"event\":\"dmb:message\",\"data\":\"\xed\xa0\x80\"}", "frame is not valid UTF-8", ""},
		{"empty", "", "invalid JSON", ""},
		{"blank", " \n\t", "invalid JSON", ""},
		{"text", "hello", "invalid JSON", ""},
		{"truncated object", `{"event":"dmb:message","id":7`, "invalid JSON", ""},
		{"trailing garbage", `{"event":"dmb:message","id":7} x`, "invalid JSON", ""},
		{"two objects", `{"event":"dmb:message","id":7}{}`, "invalid JSON", ""},
		{"single quotes", `{'event':'dmb:message'}`, "invalid JSON", ""},
		{"trailing comma", `{"event":"dmb:message","id":7,}`, "invalid JSON", ""},
		{"truncated array", `[1,`, "invalid JSON", ""},
		{"NaN", `NaN`, "invalid JSON", ""},
		{"array", `[{"event":"dmb:message","id":7}]`, "frame must be a JSON object", ""},
		{"empty array", `[]`, "frame must be a JSON object", ""},
		{"string", `"dmb:message"`, "frame must be a JSON object", ""},
		{"number", ` 7 `, "frame must be a JSON object", ""},
		{"huge number", `1e999`, "frame must be a JSON object", ""},
		{"null", `null`, "frame must be a JSON object", ""},
		{"true", `true`, "frame must be a JSON object", ""},
		{"event is a number", `{"event":5,"id":7}`, "event must be a string", "7"},
		{"event is an array, id before", `{"id":"r-1","event":["dmb:message"]}`, "event must be a string", `"r-1"`},
		{"event is an object, id null", `{"event":{},"id":null}`, "event must be a string", ""},
		{"event is a bool, id an object", `{"event":true,"id":{}}`, "id must be a string or a number", ""},
		{"id is an object", `{"event":"dmb:message","data":1,"id":{"n":7}}`, "id must be a string or a number", ""},
		{"id is an array", `{"event":"dmb:message","data":1,"id":[7]}`, "id must be a string or a number", ""},
		{"id is true", `{"event":"dmb:message","data":1,"id":true}`, "id must be a string or a number", ""},
		{"id is false, event unknown", `{"event":"x","id":false}`, "id must be a string or a number", ""},
		{"empty object", `{}`, "missing event", ""},
		{"missing event with id", `{"data":1,"id":7}`, "missing event", "7"},
		{"null event", `{"event":null,"id":"r-1"}`, "missing event", `"r-1"`},
		{"unknown event", `{"event":"dmb:ack","id":7}`, `unknown event "dmb:ack"`, "7"},
		{"empty event", `{"event":""}`, `unknown event ""`, ""},
		{"event case differs", `{"event":"DMB:MESSAGE","id":-1.5e3}`, `unknown event "DMB:MESSAGE"`, "-1.5e3"},
		{"event needing escapes", `{"event":"a\"b\\c\n","id":"\u00e9"}`, `unknown event "a\"b\\c\n"`, `"\u00e9"`},
		{"long event cut to 64 bytes", `{"event":"` + long + `"}`, `unknown event "` + long[:64] + `..."`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := protocol.DecodeClientFrame([]byte(tt.in))
			if err == nil {
				t.Fatalf("DecodeClientFrame(%q) = %+v, want error %q", tt.in, f, tt.reason)
			}
			var fe *protocol.FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %v, want *FrameError", err, err)
			}
			if fe.Reason != tt.reason || err.Error() != tt.reason {
				t.Errorf("Reason = %q, Error() = %q, want %q", fe.Reason, err.Error(), tt.reason)
			}
			if tt.id == "" && fe.ID != nil {
				t.Errorf("ID = %s, want none", fe.ID)
			}
			if string(fe.ID) != tt.id {
				t.Errorf("ID = %s, want %s", fe.ID, tt.id)
			}
			// The answer to the client (section 6) is valid JSON.
			if out := protocol.AppendError(nil, fe.ID, fe.Reason); !json.Valid(out) {
				t.Errorf("AppendError wrote invalid JSON: %s", out)
			}
		})
	}
}

func TestClientFrameFieldNamesAreCaseSensitive(t *testing.T) {
	// JSON member names are case-sensitive, so "Data", "EVENT" and "ID" are
	// unknown fields, which the contract says to ignore.
	tests := []struct {
		name, in string
		data, id string
		reason   string // "" for success
	}{
		{"Data does not override data", `{"event":"dmb:message","data":{"text":"hi"},"Data":"spoofed"}`, `{"text":"hi"}`, "", ""},
		{"Id does not override id", `{"event":"dmb:message","data":1,"id":7,"Id":8}`, "1", "7", ""},
		{"ID of the wrong type is ignored", `{"event":"dmb:message","data":1,"ID":{}}`, "1", "", ""},
		{"EVENT is not event", `{"EVENT":"dmb:message","data":1}`, "", "", "missing event"},
		{"Event does not override event", `{"event":"dmb:message","data":1,"Event":"dmb:ack"}`, "1", "", ""},
		// A name is compared once unescaped, as encoding/json does.
		{"escaped names are their text", `{"ev\u0065nt":"dmb:message","d\u0061ta":2,"\u0069d":9}`, "2", "9", ""},
		{"escaped names keep their case", `{"\u0045VENT":"dmb:message","data":1}`, "", "", "missing event"},
		{"many unknown members", `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"event":"dmb:message","data":3,"j":10}`, "3", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := protocol.DecodeClientFrame([]byte(tt.in))
			if tt.reason != "" {
				if err == nil || err.Error() != tt.reason {
					t.Errorf("DecodeClientFrame(%s) = %s, %s, %v; want error %q", tt.in, f.Data, f.ID, err, tt.reason)
				}
				return
			}
			if err != nil || string(f.Data) != tt.data || string(f.ID) != tt.id {
				t.Errorf("DecodeClientFrame(%s) = data %s, id %s, %v; want data %s, id %q", tt.in, f.Data, f.ID, err, tt.data, tt.id)
			}
		})
	}
}

func TestClientFrameWithNonJSONWhitespaceIsInvalidJSON(t *testing.T) {
	// RFC 8259 whitespace is space, tab, LF and CR only.
	const frame = `{"event":"dmb:message","data":1}`
	for _, in := range []string{"\u00a0" + frame, "\f" + frame, frame + "\v", "\u0085" + frame, "\u2028" + frame + "\u3000"} {
		f, err := protocol.DecodeClientFrame([]byte(in))
		if err == nil || err.Error() != "invalid JSON" {
			t.Errorf("DecodeClientFrame(%q) = %+v, %v; want error \"invalid JSON\"", in, f, err)
		}
	}
}

func TestClientEncodersWriteTheFramesOfSections3To6(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	hi := json.RawMessage(`{"text":"hi"}`)
	tests := []struct {
		name   string
		got    []byte
		want   string
		fields map[string]any
	}{
		{"connected (section 3)",
			protocol.AppendConnected(nil, protocol.Connected{CID: "c7Qx...", Service: "chat"}),
			`{"event":"dmb:connected","cid":"c7Qx...","service":"chat"}`,
			map[string]any{"event": "dmb:connected", "cid": "c7Qx...", "service": "chat"}},
		{"connected with a session (section 11)",
			protocol.AppendConnected(nil, protocol.Connected{CID: "c7Qx...", Service: "chat", Session: "a.b-c_d"}),
			`{"event":"dmb:connected","cid":"c7Qx...","service":"chat","session":"a.b-c_d","resumed":false}`,
			map[string]any{"event": "dmb:connected", "cid": "c7Qx...", "service": "chat", "session": "a.b-c_d", "resumed": false}},
		{"connected, resumed (section 11)",
			protocol.AppendConnected(nil, protocol.Connected{CID: "c7Qx...", Service: "chat", Session: "t", Resumed: true, Recovered: true}),
			`{"event":"dmb:connected","cid":"c7Qx...","service":"chat","session":"t","resumed":true,"recovered":true}`,
			map[string]any{"event": "dmb:connected", "cid": "c7Qx...", "service": "chat", "session": "t", "resumed": true, "recovered": true}},
		{"close (section 12)",
			protocol.AppendClose(nil, 4004, "unknown \"service\""),
			`{"event":"dmb:close","code":4004,"reason":"unknown \"service\""}`,
			map[string]any{"event": "dmb:close", "code": n("4004"), "reason": "unknown \"service\""}},
		{"session (section 11)",
			protocol.AppendSession(nil, "a.b"),
			`{"event":"dmb:session","session":"a.b"}`,
			map[string]any{"event": "dmb:session", "session": "a.b"}},
		{"broadcast with its offset (section 11)",
			protocol.WithOffset(protocol.AppendBroadcast(nil, json.RawMessage(`1`)), "42", "17-3"),
			`{"event":"dmb:broadcast","data":1,"offset":"42:17-3"}`,
			map[string]any{"event": "dmb:broadcast", "data": n("1"), "offset": "42:17-3"}},
		{"ack (section 4)",
			protocol.AppendAck(nil, json.RawMessage(`7`)),
			`{"event":"dmb:ack","id":7}`,
			map[string]any{"event": "dmb:ack", "id": n("7")}},
		{"ack with string id",
			protocol.AppendAck(nil, json.RawMessage(`"r-1"`)),
			`{"event":"dmb:ack","id":"r-1"}`,
			map[string]any{"event": "dmb:ack", "id": "r-1"}},
		{"backend unavailable (section 4)",
			protocol.AppendError(nil, json.RawMessage(`7`), protocol.ErrTextBackendUnavailable),
			`{"event":"dmb:error","id":7,"error":"backend unavailable"}`,
			map[string]any{"event": "dmb:error", "id": n("7"), "error": "backend unavailable"}},
		{"broker unavailable (section 4)",
			protocol.AppendError(nil, json.RawMessage(`"r-1"`), protocol.ErrTextBrokerUnavailable),
			`{"event":"dmb:error","id":"r-1","error":"broker unavailable"}`,
			map[string]any{"event": "dmb:error", "id": "r-1", "error": "broker unavailable"}},
		{"error without id (section 6)",
			protocol.AppendError(nil, nil, "invalid JSON"),
			`{"event":"dmb:error","error":"invalid JSON"}`,
			map[string]any{"event": "dmb:error", "error": "invalid JSON"}},
		{"error text needing escapes",
			protocol.AppendError(nil, nil, "unknown event \"a\\\"b\"\n\t\x00"),
			`{"event":"dmb:error","error":"unknown event \"a\\\"b\"\n\t\u0000"}`,
			map[string]any{"event": "dmb:error", "error": "unknown event \"a\\\"b\"\n\t\x00"}},
		{"broadcast (section 5)",
			protocol.AppendBroadcast(nil, hi),
			`{"event":"dmb:broadcast","data":{"text":"hi"}}`,
			map[string]any{"event": "dmb:broadcast", "data": map[string]any{"text": "hi"}}},
		{"broadcast without data",
			protocol.AppendBroadcast(nil, nil),
			`{"event":"dmb:broadcast","data":null}`,
			map[string]any{"event": "dmb:broadcast", "data": nil}},
		{"broadcast keeps data byte for byte",
			protocol.AppendBroadcast(nil, json.RawMessage(`[ 1.50 , "\u00e9" ]`)),
			`{"event":"dmb:broadcast","data":[ 1.50 , "\u00e9" ]}`,
			map[string]any{"event": "dmb:broadcast", "data": []any{n("1.50"), "é"}}},
		{"direct with reply_to (section 5)",
			protocol.AppendDirect(nil, hi, json.RawMessage(`7`), false),
			`{"event":"dmb:direct","data":{"text":"hi"},"reply_to":7}`,
			map[string]any{"event": "dmb:direct", "data": map[string]any{"text": "hi"}, "reply_to": n("7")}},
		{"direct with string reply_to",
			protocol.AppendDirect(nil, hi, json.RawMessage(`"r-1"`), false),
			`{"event":"dmb:direct","data":{"text":"hi"},"reply_to":"r-1"}`,
			map[string]any{"event": "dmb:direct", "data": map[string]any{"text": "hi"}, "reply_to": "r-1"}},
		{"direct without reply_to",
			protocol.AppendDirect(nil, hi, nil, false),
			`{"event":"dmb:direct","data":{"text":"hi"}}`,
			map[string]any{"event": "dmb:direct", "data": map[string]any{"text": "hi"}}},
		{"direct without data",
			protocol.AppendDirect(nil, nil, nil, false),
			`{"event":"dmb:direct","data":null}`,
			map[string]any{"event": "dmb:direct", "data": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkEncoded(t, tt.got, tt.want, tt.fields)
		})
	}
}

func TestClientErrorTextIsEscapedToValidJSON(t *testing.T) {
	texts := []string{
		`quote " backslash \ slash /`,
		"control \x00\x01\x1f\x7f newline \n tab \t",
		"<script>&amp;</script>",
		"line separators \u2028 \u2029",
		"unicode é € 😀",
		"invalid UTF-8 \xff\xc3",
		"",
	}
	for _, text := range texts {
		for _, id := range []json.RawMessage{nil, json.RawMessage(`7`)} {
			out := protocol.AppendError(nil, id, text)
			m := decodeFields(t, out)
			want := string([]rune(text)) // each invalid byte reads back as U+FFFD
			if m["error"] != want {
				t.Errorf("AppendError(%q) = %s: error reads back as %q", text, out, m["error"])
			}
		}
	}
}

func TestEncodersAppendToDst(t *testing.T) {
	id := json.RawMessage(`7`)
	data := json.RawMessage(`{"a":1}`)
	encoders := map[string]func([]byte) []byte{
		"AppendConnected": func(b []byte) []byte {
			return protocol.AppendConnected(b, protocol.Connected{CID: "c1", Service: "chat", Session: "t", Resumed: true})
		},
		"AppendSession":   func(b []byte) []byte { return protocol.AppendSession(b, "t") },
		"AppendBroadcast": func(b []byte) []byte { return protocol.AppendBroadcast(b, data) },
		"AppendDirect":    func(b []byte) []byte { return protocol.AppendDirect(b, data, id, false) },
		"AppendAck":       func(b []byte) []byte { return protocol.AppendAck(b, id) },
		"AppendError":     func(b []byte) []byte { return protocol.AppendError(b, id, "x") },
		"AppendClientConnected": func(b []byte) []byte {
			return protocol.AppendClientConnected(b, "c1", "chat", "::1", "alice", true, nil)
		},
		"AppendClientDisconnected": func(b []byte) []byte { return protocol.AppendClientDisconnected(b, "c1", 1001, "going away", true) },
		"AppendMessage":            func(b []byte) []byte { return protocol.AppendMessage(b, "c1", "alice", data, id) },
		"AppendMessageAck":         func(b []byte) []byte { return protocol.AppendMessageAck(b, id, "dmb-a1", 3) },
		"AppendBackendError":       func(b []byte) []byte { return protocol.AppendBackendError(b, "x", id, "dmb-a1") },
	}
	for name, enc := range encoders {
		alone := enc(nil)
		prefix := []byte("prefix|")
		got := enc(append(make([]byte, 0, 512), prefix...))
		if string(got) != string(prefix)+string(alone) {
			t.Errorf("%s(dst) = %s, want dst followed by %s", name, got, alone)
		}
	}
}

func TestSizesAreWhatTheEncodersAppend(t *testing.T) {
	data := json.RawMessage(`{"a":1}`)
	for _, tc := range []struct {
		name      string
		cid, user string
		data, id  json.RawMessage
	}{
		{"with id", "c1", "", data, json.RawMessage(`7`)},
		{"string id and user", "c7Qx", "alice", data, json.RawMessage(`"m-9"`)},
		{"no id", "c1", "", data, nil},
		{"no data", "c1", "", nil, json.RawMessage(`1`)},
	} {
		if got, want := protocol.MessageSize(tc.cid, tc.user, tc.data, tc.id), len(protocol.AppendMessage(nil, tc.cid, tc.user, tc.data, tc.id)); got != want {
			t.Errorf("%s: MessageSize = %d, AppendMessage appends %d", tc.name, got, want)
		}
		if tc.id != nil {
			if got, want := protocol.AckSize(tc.id), len(protocol.AppendAck(nil, tc.id)); got != want {
				t.Errorf("%s: AckSize = %d, AppendAck appends %d", tc.name, got, want)
			}
		}
	}
}
