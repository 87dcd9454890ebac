package protocol_test

import (
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/dmb-broker/dmb/protocol"
)

// FuzzDecodeClientFrame checks that no browser frame crashes the decoder, that
// an accepted frame is a dmb:message whose data and id are carried byte for
// byte and re-encode to valid JSON, and that a refused frame gets an answer
// a client can read (docs/protocol.md, sections 4 and 6). More seeds are in
// testdata/fuzz/FuzzDecodeClientFrame.
func FuzzDecodeClientFrame(f *testing.F) {
	for _, seed := range []string{
		`{"event":"dmb:message","data":{"text":"hi"},"id":7}`,
		`{"event":"dmb:message","data":{"text":"hi"}}`,
		`{"event":"dmb:message","id":"r-1"}`,
		`{ "event" : "dmb:message" , "data" : [ 1.50 , "\u00e9" ] , "id" : null , "v" : 2 }`,
		`{"event":"dmb:ack","id":7}`,
		`{"event":5,"id":"r-1"}`,
		`{"event":"dmb:message","id":{}}`,
		`{"event":"dmb:join","room":"game-7","id":3}`,
		`{"event":"dmb:leave","room":"a/b:c@d.e-f_g","id":"x"}`,
		`{"event":"dmb:join","room":"no spaces","id":3}`,
		`{"event":"dmb:join","id":3}`,
		`{"data":1,"id":-1.5e3}`,
		`[{"event":"dmb:message"}]`,
		`{"event":"dmb:message"`,
		"{\"event\":\"dmb:message\",\"data\":\"\xff\"}",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		frame, err := protocol.DecodeClientFrame(in)
		if err != nil {
			checkClientFrameError(t, in, err)
			return
		}
		checkClientFrame(t, in, frame)
	})
}

func checkClientFrame(t *testing.T, in []byte, f protocol.ClientFrame) {
	t.Helper()
	if !json.Valid(in) {
		t.Fatalf("accepted a frame that is not JSON: %q", in)
	}
	m, ok := members(in)
	if !ok {
		t.Fatalf("accepted a frame that is not a JSON object: %q", in)
	}
	ev, ok := stringMember(m, "event")
	if !ok || ev != f.Event {
		t.Fatalf("accepted event %q (frame has %s): %q", f.Event, m["event"], in)
	}
	if ev == protocol.EventJoin || ev == protocol.EventLeave {
		if room, _ := stringMember(m, "room"); room != f.Room || !protocol.ValidRoom(f.Room) {
			t.Fatalf("accepted room %q (frame has %s): %q", f.Room, m["room"], in)
		}
		for _, joined := range []bool{true, false} {
			if _, ok := members(protocol.AppendMembership(nil, joined, f.Room)); !ok {
				t.Fatalf("AppendMembership wrote invalid JSON for room %q", f.Room)
			}
			if _, ok := members(protocol.AppendRoomEvent(nil, joined, "c1", f.Room, "al\\ice")); !ok {
				t.Fatalf("AppendRoomEvent wrote invalid JSON for room %q", f.Room)
			}
		}
		return
	}
	if ev != protocol.EventMessage {
		t.Fatalf("accepted event %q: %q", f.Event, in)
	}
	if !json.Valid(f.Data) {
		t.Fatalf("Data %q is not valid JSON: %q", f.Data, in)
	}
	if !sameRaw(f.Data, orNull(m["data"])) {
		t.Fatalf("Data = %q, frame has %q: %q", f.Data, m["data"], in)
	}
	if f.ID != nil && !isJSONStringOrNumber(f.ID) {
		t.Fatalf("ID %q is not a JSON string or number: %q", f.ID, in)
	}
	if want := idMember(m, "id"); !sameRaw(f.ID, want) {
		t.Fatalf("ID = %q, frame has %q: %q", f.ID, want, in)
	}

	// What DMB sends on: the uplink message and the answer to the client.
	for _, user := range []string{"", "alice"} {
		msg := protocol.AppendMessage(nil, "c1", user, f.Data, f.ID)
		out, ok := members(msg)
		if !ok {
			t.Fatalf("AppendMessage wrote invalid JSON %q for %q", msg, in)
		}
		if !sameRaw(out["data"], f.Data) || !sameRaw(idMember(out, "id"), f.ID) {
			t.Fatalf("AppendMessage %q does not carry data %q and id %q", msg, f.Data, f.ID)
		}
	}
	if f.ID != nil {
		ack := protocol.AppendAck(nil, f.ID)
		if out, ok := members(ack); !ok || !sameRaw(out["id"], f.ID) {
			t.Fatalf("AppendAck wrote %q for id %q", ack, f.ID)
		}
	}
	errFrame := protocol.AppendError(nil, f.ID, protocol.ErrTextBackendUnavailable)
	if out, ok := members(errFrame); !ok || !sameRaw(idMember(out, "id"), f.ID) {
		t.Fatalf("AppendError wrote %q for id %q", errFrame, f.ID)
	}
}

func checkClientFrameError(t *testing.T, in []byte, err error) {
	t.Helper()
	var fe *protocol.FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("error %T %v, want *FrameError: %q", err, err, in)
	}
	if fe.Reason == "" || err.Error() != fe.Reason || !utf8.ValidString(fe.Reason) {
		t.Fatalf("bad reason %q (Error() %q): %q", fe.Reason, err.Error(), in)
	}
	if fe.ID != nil && !isJSONStringOrNumber(fe.ID) {
		t.Fatalf("ID %q is not a JSON string or number: %q", fe.ID, in)
	}
	// The answer to the client reads back as the reason and the id.
	out, ok := members(protocol.AppendError(nil, fe.ID, fe.Reason))
	if !ok {
		t.Fatalf("AppendError wrote invalid JSON for %q", in)
	}
	if text, _ := stringMember(out, "error"); text != fe.Reason || !sameRaw(idMember(out, "id"), fe.ID) {
		t.Fatalf("AppendError reads back as %q, %q; want %q, %q", text, out["id"], fe.Reason, fe.ID)
	}

	switch {
	case !utf8.Valid(in):
		if fe.Reason != "frame is not valid UTF-8" {
			t.Fatalf("reason %q for invalid UTF-8 %q", fe.Reason, in)
		}
		return
	case !json.Valid(in):
		if fe.Reason != "invalid JSON" {
			t.Fatalf("reason %q for invalid JSON %q", fe.Reason, in)
		}
		return
	}
	m, ok := members(in)
	if !ok {
		if fe.Reason != "frame must be a JSON object" {
			t.Fatalf("reason %q for a non-object %q", fe.Reason, in)
		}
		return
	}
	// Section 6: with id when one could be read.
	if id := idMember(m, "id"); id != nil && isJSONStringOrNumber(id) && !sameRaw(fe.ID, id) {
		t.Fatalf("error %q carries id %q, frame has %q: %q", fe.Reason, fe.ID, id, in)
	}
}
