package protocol_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

func TestRegisterPayloadsOfSection2Decode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want protocol.RegisterRequest
	}{
		{"bk_connect (section 2 example)",
			`{"type":"bk_connect","nonce":"n-81f2","service":"chat"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-81f2", Service: "chat"}},
		{"bk_connect re-register with a bkid string (section 2 example)",
			`{"type":"bk_connect","nonce":"n-81f3","service":"chat","bkid":"42"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-81f3", Service: "chat", BKID: "42"}},
		{"bk_connect with a bkid number",
			`{"type":"bk_connect","nonce":"n-81f3","service":"chat","bkid":42}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-81f3", Service: "chat", BKID: "42"}},
		{"bk_connect with a null bkid",
			`{"type":"bk_connect","nonce":"n-1","service":"chat","bkid":null}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat"}},
		{"bk_connect with an escaped bkid string",
			`{"type":"bk_connect","nonce":"n-1","service":"chat","bkid":"\u0034\u0032"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat", BKID: "42"}},
		{"bk_connect with the longest names",
			`{"type":"bk_connect","nonce":"` + strings.Repeat("N", 128) + `","service":"` + strings.Repeat("s", 64) + `","bkid":"9223372036854775807"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: strings.Repeat("N", 128), Service: strings.Repeat("s", 64), BKID: "9223372036854775807"}},
		{"bk_connect with unknown fields",
			` {"v":1,"type":"bk_connect","nonce":"n-1","service":"chat","extra":{"type":"bk_disconnect"},"ttl":1e999} `,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat"}},
		{"bk_disconnect (section 2 example)",
			`{"type":"bk_disconnect","bkid":"42"}`,
			protocol.RegisterRequest{Type: "bk_disconnect", BKID: "42"}},
		{"bk_disconnect with a bkid number",
			`{"type":"bk_disconnect","bkid":42}`,
			protocol.RegisterRequest{Type: "bk_disconnect", BKID: "42"}},
		{"bk_disconnect with unknown fields",
			`{"type":"bk_disconnect","bkid":"7","reason":"shutdown","nonce":"n-1"}`,
			protocol.RegisterRequest{Type: "bk_disconnect", BKID: "7", Nonce: "n-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := protocol.DecodeRegister([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeRegister(%s): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("DecodeRegister(%s)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestBKConnectWithAnUnusableBKIDGetsANewOneInsteadOfAnError(t *testing.T) {
	for _, bkid := range []string{
		`"042"`, `"0"`, `0`, `-1`, `"-1"`, `4.2e1`, `42.0`, `"4x"`, `"abc"`, `""`, `" 42"`,
		`"10000000000000000000"`, `10000000000000000000`, `true`, `{}`, `[42]`, `{"bkid":"42"}`,
	} {
		in := `{"type":"bk_connect","nonce":"n-1","service":"chat","bkid":` + bkid + `}`
		got, err := protocol.DecodeRegister([]byte(in))
		want := protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat"}
		if err != nil || got != want {
			t.Errorf("DecodeRegister(%s) = %+v, %v; want %+v, nil", in, got, err, want)
		}
	}
}

func TestBKConnectThatCanBeAnsweredIsNackedWithItsNonce(t *testing.T) {
	tests := []struct {
		name, in, reason string
	}{
		{"invalid service (section 2 example)", `{"type":"bk_connect","nonce":"n-81f2","service":"Chat"}`, "invalid service name"},
		{"missing service", `{"type":"bk_connect","nonce":"n-81f2"}`, "invalid service name"},
		{"null service", `{"type":"bk_connect","nonce":"n-81f2","service":null}`, "invalid service name"},
		{"empty service", `{"type":"bk_connect","nonce":"n-81f2","service":""}`, "invalid service name"},
		{"65-char service", `{"type":"bk_connect","nonce":"n-81f2","service":"` + strings.Repeat("s", 65) + `"}`, "invalid service name"},
		{"service with a glob", `{"type":"bk_connect","nonce":"n-81f2","service":"chat*","bkid":"42"}`, "invalid service name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := protocol.DecodeRegister([]byte(tt.in))
			checkPayloadError(t, err, tt.reason, "")
			// The caller answers on dmb:register:{nonce} (registry.handleRegister).
			if got.Type != protocol.TypeConnect || got.Nonce != "n-81f2" {
				t.Errorf("DecodeRegister(%s) = %+v: the nack cannot be addressed", tt.in, got)
			}
		})
	}
}

func TestBKConnectWithAWrongTypedFieldIsStillNackedWithItsNonce(t *testing.T) {
	for _, in := range []string{
		`{"type":"bk_connect","nonce":"n-81f2","service":42}`,
		`{"type":"bk_connect","nonce":"n-81f2","service":["chat"]}`,
		`{"type":"bk_connect","service":{"name":"chat"},"nonce":"n-81f2"}`,
	} {
		got, err := protocol.DecodeRegister([]byte(in))
		var pe *protocol.PayloadError
		if !errors.As(err, &pe) || pe.Reason == "" {
			t.Errorf("DecodeRegister(%s) error = %v, want a *PayloadError", in, err)
		}
		if got.Type != protocol.TypeConnect || got.Nonce != "n-81f2" {
			t.Errorf("DecodeRegister(%s) = %+v, %v; want Type bk_connect and Nonce n-81f2 so that the caller can nack", in, got, err)
		}
	}
}

func TestBKConnectWithAnInvalidNonceCannotBeAnswered(t *testing.T) {
	for _, nonce := range []string{
		``, `"n 1"`, `"n/1"`, `"n*"`, `"` + strings.Repeat("N", 129) + `"`, `"n\u00e9"`, `null`,
	} {
		var in string
		if nonce == "" {
			in = `{"type":"bk_connect","service":"chat"}`
		} else {
			in = `{"type":"bk_connect","nonce":` + nonce + `,"service":"Bad Service"}`
		}
		got, err := protocol.DecodeRegister([]byte(in))
		checkPayloadError(t, err, "invalid nonce", "")
		if got.Type == protocol.TypeConnect && protocol.ValidNonce(got.Nonce) {
			t.Errorf("DecodeRegister(%s) = %+v: looks answerable", in, got)
		}
	}
}

func TestBKDisconnectNeedsAValidBKID(t *testing.T) {
	for _, in := range []string{
		`{"type":"bk_disconnect"}`,
		`{"type":"bk_disconnect","bkid":null}`,
		`{"type":"bk_disconnect","bkid":""}`,
		`{"type":"bk_disconnect","bkid":"042"}`,
		`{"type":"bk_disconnect","bkid":"0"}`,
		`{"type":"bk_disconnect","bkid":-42}`,
		`{"type":"bk_disconnect","bkid":4.2e1}`,
		`{"type":"bk_disconnect","bkid":"uplink:42"}`,
		`{"type":"bk_disconnect","bkid":true}`,
		`{"type":"bk_disconnect","bkid":["42"]}`,
		`{"type":"bk_disconnect","bkid":"10000000000000000000"}`,
	} {
		got, err := protocol.DecodeRegister([]byte(in))
		checkPayloadError(t, err, "invalid bkid", "")
		if got.BKID != "" {
			t.Errorf("DecodeRegister(%s).BKID = %q, want none", in, got.BKID)
		}
	}
}

func TestBadRegisterPayloadIsDroppedWithWhatWasWrong(t *testing.T) {
	tests := []struct {
		name, in, reason string
	}{
		{"invalid UTF-8", "{\"type\":\"bk_connect\",\"nonce\":\"n-1\",\"service\":\"\xff\"}", "payload is not valid UTF-8"},
		{"empty", "", "invalid JSON"},
		{"not JSON", "bk_connect", "invalid JSON"},
		{"truncated", `{"type":"bk_connect"`, "invalid JSON"},
		{"trailing garbage", `{"type":"bk_disconnect","bkid":"42"} {}`, "invalid JSON"},
		{"array", `[{"type":"bk_disconnect","bkid":"42"}]`, "payload must be a JSON object"},
		{"string", `"bk_connect"`, "payload must be a JSON object"},
		{"null", `null`, "payload must be a JSON object"},
		{"huge number", `-1e999`, "payload must be a JSON object"},
		{"empty object", `{}`, "missing type"},
		{"null type", `{"type":null,"bkid":"42"}`, "missing type"},
		{"empty type", `{"type":"","nonce":"n-1","service":"chat"}`, "missing type"},
		{"unknown type", `{"type":"bk_connect_ack","nonce":"n-1"}`, `unknown type "bk_connect_ack"`},
		{"type case differs", `{"type":"BK_CONNECT","nonce":"n-1","service":"chat"}`, `unknown type "BK_CONNECT"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := protocol.DecodeRegister([]byte(tt.in))
			checkPayloadError(t, err, tt.reason, "")
		})
	}
}

func TestRegisterPayloadWithAWrongTypedFieldIsDropped(t *testing.T) {
	for _, tc := range []struct{ in, reason string }{
		{`{"type":7}`, "type must be a string"},
		{`{"type":["bk_connect"],"nonce":"n-1","service":"chat"}`, "type must be a string"},
		{`{"type":"bk_connect","nonce":7,"service":"chat"}`, "invalid nonce"},
		{`{"type":"bk_connect","nonce":"n-1","service":7}`, "invalid service name"},
	} {
		_, err := protocol.DecodeRegister([]byte(tc.in))
		var pe *protocol.PayloadError
		if !errors.As(err, &pe) || pe.Reason != tc.reason || pe.ID != nil {
			t.Errorf("DecodeRegister(%s) error = %#v, want %q", tc.in, err, tc.reason)
		}
	}
}

// Members that do not belong to a payload's type are ignored, whatever
// their type.
func TestRegisterPayloadIgnoresMembersOfOtherTypes(t *testing.T) {
	req, err := protocol.DecodeRegister([]byte(`{"type":"bk_disconnect","bkid":"42","service":false}`))
	if err != nil || req.BKID != "42" {
		t.Fatalf("DecodeRegister = %+v, %v", req, err)
	}
}

func TestRegisterFieldNamesAreCaseSensitive(t *testing.T) {
	tests := []struct {
		in   string
		want protocol.RegisterRequest
	}{
		{`{"type":"bk_connect","nonce":"n-1","service":"chat","Service":"other"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat"}},
		{`{"type":"bk_connect","nonce":"n-1","service":"chat","BKID":"42"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat"}},
		{`{"type":"bk_connect","nonce":"n-1","service":"chat","Type":"bk_disconnect"}`,
			protocol.RegisterRequest{Type: "bk_connect", Nonce: "n-1", Service: "chat"}},
	}
	for _, tt := range tests {
		got, err := protocol.DecodeRegister([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("DecodeRegister(%s) = %+v, %v; want %+v, nil", tt.in, got, err, tt.want)
		}
	}
}

func TestDownlinkCommandsOfSection5Decode(t *testing.T) {
	hi := `{"text":"hi"}`
	tests := []struct {
		name string
		in   string
		want protocol.Command
	}{
		{"broadcast",
			`{"type":"broadcast","data":{"text":"hi"}}`,
			protocol.Command{Type: "broadcast", Data: json.RawMessage(hi)}},
		{"broadcast without data",
			`{"type":"broadcast"}`,
			protocol.Command{Type: "broadcast"}},
		{"broadcast with null data",
			`{"type":"broadcast","data":null}`,
			protocol.Command{Type: "broadcast", Data: json.RawMessage(`null`)}},
		{"broadcast with id",
			`{"type":"broadcast","data":{"text":"hi"},"id":"m-9"}`,
			protocol.Command{Type: "broadcast", Data: json.RawMessage(hi), ID: json.RawMessage(`"m-9"`)}},
		{"broadcast with null id",
			`{"type":"broadcast","data":1,"id":null}`,
			protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`)}},
		{"broadcast with a huge id",
			`{"type":"broadcast","data":1,"id":1e999}`,
			protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`), ID: json.RawMessage(`1e999`)}},
		{"direct with reply_to",
			`{"type":"direct","cid":"c7Qx...","data":{"text":"hi"},"reply_to":7}`,
			protocol.Command{Type: "direct", CID: "c7Qx...", Data: json.RawMessage(hi), ReplyTo: json.RawMessage(`7`)}},
		{"direct with string reply_to and id",
			`{"type":"direct","cid":"c1","data":1,"reply_to":"r-1","id":-2}`,
			protocol.Command{Type: "direct", CID: "c1", Data: json.RawMessage(`1`), ReplyTo: json.RawMessage(`"r-1"`), ID: json.RawMessage(`-2`)}},
		{"direct with null reply_to",
			`{"type":"direct","cid":"c1","data":1,"reply_to":null}`,
			protocol.Command{Type: "direct", CID: "c1", Data: json.RawMessage(`1`)}},
		{"direct to a user (section 7)",
			`{"type":"direct","user":"alice","data":1}`,
			protocol.Command{Type: "direct", User: "alice", Data: json.RawMessage(`1`)}},
		{"kick",
			`{"type":"kick","cid":"c7Qx...","reason":"banned"}`,
			protocol.Command{Type: "kick", CID: "c7Qx...", Reason: "banned"}},
		{"kick without reason",
			`{"type":"kick","cid":"c1","id":3}`,
			protocol.Command{Type: "kick", CID: "c1", ID: json.RawMessage(`3`)}},
		{"data and id byte for byte",
			"{ \"type\" : \"broadcast\" , \"data\" : { \"a\" : [ 1.50 , \"\\u00e9\" ] } , \"id\" : \"m \\u0039\" }",
			protocol.Command{Type: "broadcast", Data: json.RawMessage(`{ "a" : [ 1.50 , "\u00e9" ] }`), ID: json.RawMessage(`"m \u0039"`)}},
		{"unknown fields ignored",
			`{"v":2,"type":"broadcast","data":1,"extra":{"type":"kick"},"ttl":1e999}`,
			protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`)}},
		{"JSON whitespace around the payload",
			"\r\n\t {\"type\":\"broadcast\",\"data\":1} \n",
			protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := protocol.DecodeCommand([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeCommand(%s): %v", tt.in, err)
			}
			if got.Type != tt.want.Type || got.CID != tt.want.CID || got.User != tt.want.User || got.Reason != tt.want.Reason ||
				string(got.Data) != string(tt.want.Data) || string(got.ReplyTo) != string(tt.want.ReplyTo) || string(got.ID) != string(tt.want.ID) ||
				(got.ID == nil) != (tt.want.ID == nil) || (got.ReplyTo == nil) != (tt.want.ReplyTo == nil) {
				t.Errorf("DecodeCommand(%s)\n got %s\nwant %s", tt.in, commandString(got), commandString(tt.want))
			}
		})
	}
}

func TestKickReasonIsCutToFitACloseFrame(t *testing.T) {
	tests := []struct {
		reason, want string
	}{
		{strings.Repeat("x", 123), strings.Repeat("x", 123)},
		{strings.Repeat("x", 500), strings.Repeat("x", 123)},
		{strings.Repeat("x", 122) + "é", strings.Repeat("x", 122)},
		{strings.Repeat("€", 60), strings.Repeat("€", 41)},
	}
	for _, tt := range tests {
		reason, _ := json.Marshal(tt.reason)
		in := `{"type":"kick","cid":"c1","reason":` + string(reason) + `}`
		got, err := protocol.DecodeCommand([]byte(in))
		if err != nil {
			t.Fatalf("DecodeCommand(%s): %v", in, err)
		}
		if got.Reason != tt.want {
			t.Errorf("kick reason of %d bytes decodes to %q (%d bytes), want %d bytes", len(tt.reason), got.Reason, len(got.Reason), len(tt.want))
		}
	}
}

func TestBadDownlinkPayloadIsDroppedWithWhatWasWrongAndTheIDWhenReadable(t *testing.T) {
	tests := []struct {
		name, in, reason, id string
	}{
		{"invalid UTF-8", "{\"type\":\"broadcast\",\"data\":\"\xc3\",\"id\":\"m-9\"}", "payload is not valid UTF-8", ""},
		{"empty", "", "invalid JSON", ""},
		{"blank", "  ", "invalid JSON", ""},
		{"not JSON", `broadcast`, "invalid JSON", ""},
		{"truncated", `{"type":"broadcast","id":"m-9"`, "invalid JSON", ""},
		{"trailing garbage", `{"type":"broadcast","id":"m-9"}]`, "invalid JSON", ""},
		{"array", `[{"type":"broadcast","id":"m-9"}]`, "payload must be a JSON object", ""},
		{"number", `42`, "payload must be a JSON object", ""},
		{"null", `null`, "payload must be a JSON object", ""},
		{"id is an object", `{"type":"broadcast","data":1,"id":{"n":1}}`, "id must be a string or a number", ""},
		{"id is true", `{"type":"kick","cid":"c1","id":true}`, "id must be a string or a number", ""},
		{"reply_to is an object", `{"type":"direct","cid":"c1","data":1,"reply_to":{},"id":"m-9"}`, "reply_to must be a string or a number", `"m-9"`},
		{"reply_to is an array", `{"type":"direct","cid":"c1","data":1,"reply_to":[7]}`, "reply_to must be a string or a number", ""},
		{"direct without cid", `{"type":"direct","data":1,"id":"m-9"}`, "direct needs a cid or a user", `"m-9"`},
		{"direct with empty cid", `{"type":"direct","cid":"","data":1,"id":7}`, "direct needs a cid or a user", "7"},
		{"kick without cid", `{"type":"kick","reason":"banned","id":"m-9"}`, "kick needs a cid", `"m-9"`},
		{"kick of a user", `{"type":"kick","user":"alice"}`, "kick needs a cid", ""},
		{"empty object", `{}`, "missing type", ""},
		{"missing type", `{"data":1,"id":"m-9"}`, "missing type", `"m-9"`},
		{"null type", `{"type":null,"id":1.5}`, "missing type", "1.5"},
		{"unknown type", `{"type":"bk_connect","id":"m-9"}`, `unknown type "bk_connect"`, `"m-9"`},
		{"type case differs", `{"type":"Broadcast","data":1}`, `unknown type "Broadcast"`, ""},
		{"long type cut to 64 bytes", `{"type":"` + strings.Repeat("t", 80) + `"}`, `unknown type "` + strings.Repeat("t", 64) + `..."`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := protocol.DecodeCommand([]byte(tt.in))
			checkPayloadError(t, err, tt.reason, tt.id)
		})
	}
}

func TestDownlinkPayloadWithAWrongTypedFieldIsDropped(t *testing.T) {
	for _, tc := range []struct{ in, reason string }{
		{`{"type":7}`, "type must be a string"},
		{`{"type":"direct","cid":7,"data":1}`, "cid must be a string"},
		{`{"type":"direct","cid":"c1","user":["alice"],"data":1}`, "user must be a string"},
		{`{"type":"kick","cid":"c1","reason":{"text":"banned"}}`, "reason must be a string"},
	} {
		_, err := protocol.DecodeCommand([]byte(tc.in))
		var pe *protocol.PayloadError
		if !errors.As(err, &pe) || pe.Reason != tc.reason {
			t.Errorf("DecodeCommand(%s) error = %v, want %q", tc.in, err, tc.reason)
		}
	}
}

func TestDownlinkPayloadWithAWrongTypedFieldKeepsItsID(t *testing.T) {
	for _, in := range []string{
		`{"type":"kick","cid":"c1","reason":42,"id":"m-9"}`,
		`{"id":"m-9","type":"direct","cid":["c1"],"data":1}`,
		`{"type":7,"id":"m-9"}`,
	} {
		_, err := protocol.DecodeCommand([]byte(in))
		var pe *protocol.PayloadError
		if !errors.As(err, &pe) || string(pe.ID) != `"m-9"` {
			t.Errorf("DecodeCommand(%s) error = %#v, want a *PayloadError with ID \"m-9\"", in, err)
		}
	}
}

func TestDownlinkFieldNamesAreCaseSensitive(t *testing.T) {
	tests := []struct {
		in   string
		want protocol.Command
	}{
		{`{"type":"broadcast","data":1,"Type":"kick","CID":"c1"}`, protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`)}},
		{`{"type":"broadcast","data":1,"DATA":2}`, protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`)}},
		{`{"type":"broadcast","data":1,"Id":{}}`, protocol.Command{Type: "broadcast", Data: json.RawMessage(`1`)}},
	}
	for _, tt := range tests {
		got, err := protocol.DecodeCommand([]byte(tt.in))
		if err != nil || commandString(got) != commandString(tt.want) {
			t.Errorf("DecodeCommand(%s) = %s, %v; want %s", tt.in, commandString(got), err, commandString(tt.want))
		}
	}
}

func TestBackendPayloadWithNonJSONWhitespaceIsInvalidJSON(t *testing.T) {
	for _, in := range []string{
		"\u00a0{\"type\":\"broadcast\",\"data\":1}",
		"{\"type\":\"broadcast\",\"data\":1}\f",
	} {
		if _, err := protocol.DecodeCommand([]byte(in)); err == nil || err.Error() != "invalid JSON" {
			t.Errorf("DecodeCommand(%q) error = %v, want \"invalid JSON\"", in, err)
		}
	}
	in := "\v{\"type\":\"bk_disconnect\",\"bkid\":\"42\"}"
	if _, err := protocol.DecodeRegister([]byte(in)); err == nil || err.Error() != "invalid JSON" {
		t.Errorf("DecodeRegister(%q) error = %v, want \"invalid JSON\"", in, err)
	}
}

func TestBackendEncodersWriteThePayloadsOfSections2To6(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	hi := json.RawMessage(`{"text":"hi"}`)
	tests := []struct {
		name   string
		got    []byte
		want   string
		fields map[string]any
	}{
		{"bk_connect_ack (section 2)",
			protocol.ConnectAck(protocol.NewChannels("dmb"), "n-81f2", "42", "chat"),
			`{"type":"bk_connect_ack","nonce":"n-81f2","bkid":"42","service":"chat","downlink":"dmb:42","uplink":"dmb:uplink:42"}`,
			map[string]any{"type": "bk_connect_ack", "nonce": "n-81f2", "bkid": "42", "service": "chat", "downlink": "dmb:42", "uplink": "dmb:uplink:42"}},
		{"bk_connect_ack under another prefix",
			protocol.ConnectAck(protocol.NewChannels(`a"b`), "n-1", "7", "chat"),
			`{"type":"bk_connect_ack","nonce":"n-1","bkid":"7","service":"chat","downlink":"a\"b:7","uplink":"a\"b:uplink:7"}`,
			map[string]any{"type": "bk_connect_ack", "nonce": "n-1", "bkid": "7", "service": "chat", "downlink": `a"b:7`, "uplink": `a"b:uplink:7`}},
		{"bk_connect_nack (section 2)",
			protocol.ConnectNack("n-81f2", "invalid service name"),
			`{"type":"bk_connect_nack","nonce":"n-81f2","error":"invalid service name"}`,
			map[string]any{"type": "bk_connect_nack", "nonce": "n-81f2", "error": "invalid service name"}},
		{"bk_connect_nack with a reason needing escapes",
			protocol.ConnectNack("n-1", "unknown type \"x\\y\"\n"),
			`{"type":"bk_connect_nack","nonce":"n-1","error":"unknown type \"x\\y\"\n"}`,
			map[string]any{"type": "bk_connect_nack", "nonce": "n-1", "error": "unknown type \"x\\y\"\n"}},
		{"client_connected (section 3)",
			protocol.AppendClientConnected(nil, "c7Qx...", "chat", "203.0.113.9", "", false, nil),
			`{"type":"client_connected","cid":"c7Qx...","service":"chat","remote":"203.0.113.9"}`,
			map[string]any{"type": "client_connected", "cid": "c7Qx...", "service": "chat", "remote": "203.0.113.9"}},
		{"client_connected with user (section 7)",
			protocol.AppendClientConnected(nil, "c7Qx...", "chat", "2001:db8::1", "alice", false, nil),
			`{"type":"client_connected","cid":"c7Qx...","service":"chat","remote":"2001:db8::1","user":"alice"}`,
			map[string]any{"type": "client_connected", "cid": "c7Qx...", "service": "chat", "remote": "2001:db8::1", "user": "alice"}},
		{"client_connected with a user needing escapes",
			protocol.AppendClientConnected(nil, "c1", "chat", "", "a\"l\\ice\u00e9", false, nil),
			`{"type":"client_connected","cid":"c1","service":"chat","remote":"","user":"a\"l\\iceé"}`,
			map[string]any{"type": "client_connected", "cid": "c1", "service": "chat", "remote": "", "user": "a\"l\\iceé"}},
		{"client_connected of a resumed session (section 11)",
			protocol.AppendClientConnected(nil, "c7Qx...", "chat", "203.0.113.9", "", true, []string{"lobby", "a\"b"}),
			`{"type":"client_connected","cid":"c7Qx...","service":"chat","remote":"203.0.113.9","resumed":true,"rooms":["lobby","a\"b"]}`,
			map[string]any{"type": "client_connected", "cid": "c7Qx...", "service": "chat", "remote": "203.0.113.9", "resumed": true, "rooms": []any{"lobby", "a\"b"}}},
		{"client_connected of a resumed session in no room",
			protocol.AppendClientConnected(nil, "c1", "chat", "", "", true, nil),
			`{"type":"client_connected","cid":"c1","service":"chat","remote":"","resumed":true,"rooms":[]}`,
			map[string]any{"type": "client_connected", "cid": "c1", "service": "chat", "remote": "", "resumed": true, "rooms": []any{}}},
		{"client_disconnected (sections 3 and 11)",
			protocol.AppendClientDisconnected(nil, "c7Qx...", 1001, "going away", true),
			`{"type":"client_disconnected","cid":"c7Qx...","code":1001,"reason":"going away","resumable":true}`,
			map[string]any{"type": "client_disconnected", "cid": "c7Qx...", "code": n("1001"), "reason": "going away", "resumable": true}},
		{"client_disconnected kicked with a reason needing escapes",
			protocol.AppendClientDisconnected(nil, "c1", protocol.CloseKicked, "banned: \"spam\"", false),
			`{"type":"client_disconnected","cid":"c1","code":4009,"reason":"banned: \"spam\"","resumable":false}`,
			map[string]any{"type": "client_disconnected", "cid": "c1", "code": n("4009"), "reason": "banned: \"spam\"", "resumable": false}},
		{"client_disconnected without reason",
			protocol.AppendClientDisconnected(nil, "c1", 1006, "", true),
			`{"type":"client_disconnected","cid":"c1","code":1006,"reason":"","resumable":true}`,
			map[string]any{"type": "client_disconnected", "cid": "c1", "code": n("1006"), "reason": "", "resumable": true}},
		{"message (section 4)",
			protocol.AppendMessage(nil, "c7Qx...", "", hi, json.RawMessage(`7`)),
			`{"type":"message","cid":"c7Qx...","data":{"text":"hi"},"id":7}`,
			map[string]any{"type": "message", "cid": "c7Qx...", "data": map[string]any{"text": "hi"}, "id": n("7")}},
		{"message without id",
			protocol.AppendMessage(nil, "c7Qx...", "", hi, nil),
			`{"type":"message","cid":"c7Qx...","data":{"text":"hi"}}`,
			map[string]any{"type": "message", "cid": "c7Qx...", "data": map[string]any{"text": "hi"}}},
		{"message with user (section 7)",
			protocol.AppendMessage(nil, "c7Qx...", "alice", hi, json.RawMessage(`"r-1"`)),
			`{"type":"message","cid":"c7Qx...","user":"alice","data":{"text":"hi"},"id":"r-1"}`,
			map[string]any{"type": "message", "cid": "c7Qx...", "user": "alice", "data": map[string]any{"text": "hi"}, "id": "r-1"}},
		{"message with user, without id",
			protocol.AppendMessage(nil, "c1", "bob", json.RawMessage(`[1]`), nil),
			`{"type":"message","cid":"c1","user":"bob","data":[1]}`,
			map[string]any{"type": "message", "cid": "c1", "user": "bob", "data": []any{n("1")}}},
		{"message without data",
			protocol.AppendMessage(nil, "c1", "", nil, nil),
			`{"type":"message","cid":"c1","data":null}`,
			map[string]any{"type": "message", "cid": "c1", "data": nil}},
		{"bk_message_ack (section 5)",
			protocol.AppendMessageAck(nil, json.RawMessage(`"m-9"`), "dmb-a1", 1830),
			`{"type":"bk_message_ack","id":"m-9","node":"dmb-a1","delivered":1830}`,
			map[string]any{"type": "bk_message_ack", "id": "m-9", "node": "dmb-a1", "delivered": n("1830")}},
		{"bk_message_ack for a cid the node does not hold",
			protocol.AppendMessageAck(nil, json.RawMessage(`12`), "dmb-b2", 0),
			`{"type":"bk_message_ack","id":12,"node":"dmb-b2","delivered":0}`,
			map[string]any{"type": "bk_message_ack", "id": n("12"), "node": "dmb-b2", "delivered": n("0")}},
		{"error with id (section 6)",
			protocol.AppendBackendError(nil, "direct needs a cid", json.RawMessage(`"m-9"`), "dmb-a1"),
			`{"type":"error","error":"direct needs a cid","id":"m-9","node":"dmb-a1"}`,
			map[string]any{"type": "error", "error": "direct needs a cid", "id": "m-9", "node": "dmb-a1"}},
		{"error without id",
			protocol.AppendBackendError(nil, "invalid JSON", nil, "dmb-a1"),
			`{"type":"error","error":"invalid JSON","node":"dmb-a1"}`,
			map[string]any{"type": "error", "error": "invalid JSON", "node": "dmb-a1"}},
		{"error with a reason needing escapes",
			protocol.AppendBackendError(nil, `unknown type "x\y"`, json.RawMessage(`1e999`), `n"1`),
			`{"type":"error","error":"unknown type \"x\\y\"","id":1e999,"node":"n\"1"}`,
			map[string]any{"type": "error", "error": `unknown type "x\y"`, "id": n("1e999"), "node": `n"1`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkEncoded(t, tt.got, tt.want, tt.fields)
		})
	}
}

// checkPayloadError asserts that err is a *PayloadError with reason and, when
// id is not "", that id.
func checkPayloadError(t *testing.T, err error, reason, id string) {
	t.Helper()
	var pe *protocol.PayloadError
	if !errors.As(err, &pe) {
		t.Fatalf("error %T %v, want *PayloadError %q", err, err, reason)
	}
	if pe.Reason != reason || err.Error() != reason {
		t.Errorf("Reason = %q, Error() = %q, want %q", pe.Reason, err.Error(), reason)
	}
	if id == "" && pe.ID != nil {
		t.Errorf("ID = %s, want none", pe.ID)
	}
	if string(pe.ID) != id {
		t.Errorf("ID = %s, want %s", pe.ID, id)
	}
	if out := protocol.AppendBackendError(nil, pe.Reason, pe.ID, "n1"); !json.Valid(out) {
		t.Errorf("AppendBackendError wrote invalid JSON: %s", out)
	}
}

func commandString(c protocol.Command) string {
	q := func(b json.RawMessage) string {
		if b == nil {
			return "<nil>"
		}
		return string(b)
	}
	return "{Type:" + c.Type + " CID:" + c.CID + " User:" + c.User + " Data:" + q(c.Data) +
		" ReplyTo:" + q(c.ReplyTo) + " Reason:" + c.Reason + " ID:" + q(c.ID) + "}"
}

func TestACommandCarriesTheOffsetDMBsFunctionGaveIt(t *testing.T) {
	for _, c := range []struct {
		payload, offset string
	}{
		{`{"offset":"1733380000000-0","type":"broadcast","data":1}`, "1733380000000-0"},
		{`{"type":"broadcast","data":1,"offset":"17-3"}`, "17-3"},
		{`{"type":"broadcast","data":1,"offset":"17"}`, ""},    // not a position: live-only
		{`{"type":"broadcast","data":1,"offset":"-3"}`, ""},    // not a position
		{`{"type":"broadcast","data":1,"offset":"1-2-3"}`, ""}, // not a position
		{`{"type":"broadcast","data":1,"offset":17}`, ""},      // not a string: ignored, as unknown members are
	} {
		cmd, err := protocol.DecodeCommand([]byte(c.payload))
		if err != nil || cmd.Offset != c.offset {
			t.Errorf("%s: offset %q, err %v; want %q", c.payload, cmd.Offset, err, c.offset)
		}
	}
	cmd, err := protocol.DecodeCommand(protocol.AppendResumed(nil, "c1", "dmb-a1"))
	if err != nil || cmd.Type != protocol.TypeResumed || cmd.CID != "c1" || cmd.Node != "dmb-a1" {
		t.Errorf("resumed: %+v, %v", cmd, err)
	}
	if _, err := protocol.DecodeCommand([]byte(`{"type":"resumed","node":"x"}`)); err == nil {
		t.Errorf("resumed without a cid was accepted")
	}
}

func TestTheLastOffsetMemberIsTheOneRead(t *testing.T) {
	// DMB's function adds its offset last: a backend's own cannot pass for it.
	cmd, err := protocol.DecodeCommand([]byte(`{"offset":"1-1","type":"broadcast","data":1,"offset":"2-2"}`))
	if err != nil || cmd.Offset != "2-2" {
		t.Fatalf("offset %q, %v; want the last, 2-2", cmd.Offset, err)
	}
}
