package protocol_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dmb-broker/dmb/protocol"
)

// FuzzDecodeRegister checks that no register-channel payload crashes the
// decoder, that an accepted one is a well-formed bk_connect or bk_disconnect,
// and that a refused bk_connect with a usable nonce can still be nacked
// (docs/protocol.md, section 2). More seeds are in testdata/fuzz/FuzzDecodeRegister.
func FuzzDecodeRegister(f *testing.F) {
	for _, seed := range []string{
		`{"type":"bk_connect","nonce":"n-81f2","service":"chat"}`,
		`{"type":"bk_connect","nonce":"n-81f3","service":"chat","bkid":"42"}`,
		`{"type":"bk_connect","nonce":"n-81f3","service":"chat","bkid":42}`,
		`{"type":"bk_connect","nonce":"n-1","service":"chat","bkid":"042"}`,
		`{"type":"bk_connect","nonce":"n-81f2","service":"Chat"}`,
		`{"type":"bk_connect","nonce":"n 1","service":"chat"}`,
		`{"type":"bk_disconnect","bkid":"42"}`,
		`{"type":"bk_disconnect","bkid":null}`,
		`{"type":"bk_connect_ack","nonce":"n-81f2","bkid":"42","service":"chat","downlink":"dmb:42","uplink":"dmb:uplink:42"}`,
		`{"type":"bk_connect","nonce":["n-1"],"service":"chat"}`,
		`[{"type":"bk_disconnect","bkid":"42"}]`,
		"{\"type\":\"bk_connect\",\"nonce\":\"n-1\",\"service\":\"\xc3\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := protocol.DecodeRegister(in)
		if err != nil {
			checkRegisterError(t, in, req, err)
			return
		}
		checkRegister(t, in, req)
	})
}

var registerFields = []string{"type", "nonce", "service", "bkid"}

func checkRegister(t *testing.T, in []byte, req protocol.RegisterRequest) {
	t.Helper()
	checkAcceptedIsJSON(t, in)
	m, ok := members(in)
	if !ok {
		t.Fatalf("accepted a payload that is not a JSON object: %q", in)
	}
	if typ, _ := stringMember(m, "type"); typ != req.Type {
		t.Fatalf("Type = %q, payload has %s: %q", req.Type, m["type"], in)
	}
	switch req.Type {
	case protocol.TypeConnect:
		if !protocol.ValidNonce(req.Nonce) || !protocol.ValidService(req.Service) {
			t.Fatalf("accepted bk_connect with nonce %q, service %q: %q", req.Nonce, req.Service, in)
		}
		if nonce, _ := stringMember(m, "nonce"); nonce != req.Nonce {
			t.Fatalf("Nonce = %q, payload has %s: %q", req.Nonce, m["nonce"], in)
		}
		if service, _ := stringMember(m, "service"); service != req.Service {
			t.Fatalf("Service = %q, payload has %s: %q", req.Service, m["service"], in)
		}
		if req.BKID != "" {
			checkBKIDMember(t, in, m, req.BKID)
		}
		bkid := req.BKID
		if bkid == "" {
			bkid = "1"
		}
		ack := protocol.ConnectAck(protocol.NewChannels("dmb"), req.Nonce, bkid, req.Service)
		out, ok := members(ack)
		if !ok {
			t.Fatalf("ConnectAck wrote invalid JSON %q for %q", ack, in)
		}
		if nonce, _ := stringMember(out, "nonce"); nonce != req.Nonce {
			t.Fatalf("ConnectAck %q lost the nonce %q", ack, req.Nonce)
		}
		if nack := protocol.ConnectNack(req.Nonce, "invalid service name"); !json.Valid(nack) {
			t.Fatalf("ConnectNack wrote invalid JSON %q for %q", nack, in)
		}
	case protocol.TypeDisconnect:
		checkBKIDMember(t, in, m, req.BKID)
	default:
		t.Fatalf("accepted type %q: %q", req.Type, in)
	}
}

// checkBKIDMember asserts that bkid is valid and is what the payload's bkid
// member says, as a string or as a number.
func checkBKIDMember(t *testing.T, in []byte, m map[string]json.RawMessage, bkid string) {
	t.Helper()
	if !protocol.ValidBKID(bkid) {
		t.Fatalf("accepted bkid %q: %q", bkid, in)
	}
	s, _ := stringMember(m, "bkid")
	if s != bkid && string(m["bkid"]) != bkid {
		t.Fatalf("BKID = %q, payload has %s: %q", bkid, m["bkid"], in)
	}
}

func checkRegisterError(t *testing.T, in []byte, req protocol.RegisterRequest, err error) {
	t.Helper()
	pe := checkPayloadErrorProperties(t, in, err)
	if pe == nil {
		return // judged: not UTF-8, not JSON or not an object
	}
	if protocol.ValidNonce(req.Nonce) {
		if nack := protocol.ConnectNack(req.Nonce, pe.Reason); !json.Valid(nack) {
			t.Fatalf("ConnectNack wrote invalid JSON %q for %q", nack, in)
		}
	}
	// Section 2: exactly one answer to a bk_connect, so one that is refused
	// but has a usable nonce comes back with it, for the nack.
	m, _ := members(in)
	typ, _ := stringMember(m, "type")
	nonce, _ := stringMember(m, "nonce")
	if typ == protocol.TypeConnect && protocol.ValidNonce(nonce) &&
		(req.Type != protocol.TypeConnect || req.Nonce != nonce) {
		t.Fatalf("refused bk_connect %q returns %+v: cannot be nacked", in, req)
	}
}

// FuzzDecodeCommand checks that no downlink payload crashes the decoder, that
// an accepted one is a well-formed broadcast, direct or kick whose data, id
// and reply_to are carried byte for byte, and that a refused one is reported
// with its id when one could be read (docs/protocol.md, sections 5 and 6). More
// seeds are in testdata/fuzz/FuzzDecodeCommand.
func FuzzDecodeCommand(f *testing.F) {
	for _, seed := range []string{
		`{"type":"broadcast","data":{"text":"hi"}}`,
		`{"type":"direct","cid":"c7Qx...","data":{"text":"hi"},"reply_to":7}`,
		`{"type":"kick","cid":"c7Qx...","reason":"banned"}`,
		`{"type":"broadcast","data":1,"id":"m-9"}`,
		`{"type":"direct","user":"alice","data":[1,{"a":null}],"id":-2.5e-3,"reply_to":"r-1"}`,
		`{"type":"direct","data":1,"id":"m-9"}`,
		`{"type":"kick","cid":"c1","reason":42,"id":"m-9"}`,
		`{"type":"broadcast","data":1,"id":{}}`,
		`{"type":"direct","cid":"c1","reply_to":[7],"id":1}`,
		`{"type":"bk_connect","id":"m-9"}`,
		`{"type":"join","room":"lobby","cid":"c1","id":"j"}`,
		`{"type":"leave","room":"lobby","user":"alice"}`,
		`{"type":"room","room":"lobby","data":{"t":1},"except":["c1","c2"]}`,
		`{"type":"broadcast","data":1,"except":[]}`,
		`{"type":"broadcast","data":1,"except":"c1"}`,
		`{"type":"presence","room":"lobby","id":"p1","count_only":true}`,
		`{"type":"presence","id":"p2"}`,
		`{"type":"direct","cid":"c1","data":"50%","reply_to":7,"more":true}`,
		`{"type":"direct","cid":"c1","data":1,"more":"yes"}`,
		`{"type":"join","room":"bad room","cid":"c1"}`,
		`{"data":1,"id":null}`,
		`null`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cmd, err := protocol.DecodeCommand(in)
		if err != nil {
			checkCommandError(t, in, err)
			return
		}
		checkCommand(t, in, cmd)
	})
}

var commandFields = []string{"type", "cid", "user", "data", "reply_to", "reason", "id"}

func checkCommand(t *testing.T, in []byte, cmd protocol.Command) {
	t.Helper()
	checkAcceptedIsJSON(t, in)
	m, ok := members(in)
	if !ok {
		t.Fatalf("accepted a payload that is not a JSON object: %q", in)
	}
	if typ, _ := stringMember(m, "type"); typ != cmd.Type {
		t.Fatalf("Type = %q, payload has %s: %q", cmd.Type, m["type"], in)
	}
	cid, _ := stringMember(m, "cid")
	user, _ := stringMember(m, "user")
	reason, _ := stringMember(m, "reason")
	if cmd.CID != cid || cmd.User != user {
		t.Fatalf("CID, User = %q, %q; payload has %s, %s: %q", cmd.CID, cmd.User, m["cid"], m["user"], in)
	}
	if cmd.Data != nil && !json.Valid(cmd.Data) {
		t.Fatalf("Data %q is not valid JSON: %q", cmd.Data, in)
	}
	if !sameRaw(cmd.Data, m["data"]) {
		t.Fatalf("Data = %q, payload has %q: %q", cmd.Data, m["data"], in)
	}
	for _, v := range []struct {
		name string
		got  json.RawMessage
	}{{"id", cmd.ID}, {"reply_to", cmd.ReplyTo}} {
		if v.got != nil && !isJSONStringOrNumber(v.got) {
			t.Fatalf("%s %q is not a JSON string or number: %q", v.name, v.got, in)
		}
		if want := idMember(m, v.name); !sameRaw(v.got, want) {
			t.Fatalf("%s = %q, payload has %q: %q", v.name, v.got, want, in)
		}
	}
	switch cmd.Type {
	case protocol.TypeBroadcast:
		if cmd.Reason != reason {
			t.Fatalf("Reason = %q, payload has %q: %q", cmd.Reason, reason, in)
		}
	case protocol.TypeDirect:
		if cmd.CID == "" && cmd.User == "" {
			t.Fatalf("accepted a direct without cid or user: %q", in)
		}
		if cmd.Reason != reason {
			t.Fatalf("Reason = %q, payload has %q: %q", cmd.Reason, reason, in)
		}
	case protocol.TypeKick, protocol.TypeResumed:
		if cmd.CID == "" {
			t.Fatalf("accepted a %s without cid: %q", cmd.Type, in)
		}
		if len(cmd.Reason) > protocol.MaxCloseReason || !utf8.ValidString(cmd.Reason) ||
			!strings.HasPrefix(reason, cmd.Reason) || cmd.Reason != protocol.TruncateReason(reason) {
			t.Fatalf("kick Reason = %q, payload has %q: %q", cmd.Reason, reason, in)
		}
	case protocol.TypeJoin, protocol.TypeLeave:
		if !protocol.ValidRoom(cmd.Room) || cmd.CID == "" && cmd.User == "" {
			t.Fatalf("accepted a %s of room %q for cid %q user %q: %q", cmd.Type, cmd.Room, cmd.CID, cmd.User, in)
		}
	case protocol.TypeRoom:
		if !protocol.ValidRoom(cmd.Room) {
			t.Fatalf("accepted a room message for room %q: %q", cmd.Room, in)
		}
		r := protocol.AppendRoom(nil, cmd.Room, cmd.Data)
		if out, ok := members(r); !ok || !sameRaw(out["data"], orNull(cmd.Data)) {
			t.Fatalf("AppendRoom wrote %q for data %q", r, cmd.Data)
		}
	case protocol.TypePresence:
		if cmd.Room != "" && !protocol.ValidRoom(cmd.Room) {
			t.Fatalf("accepted presence of room %q: %q", cmd.Room, in)
		}
		one := []protocol.Member{{CID: "c1", User: cmd.User}}
		if _, ok := members(protocol.AppendPresence(nil, cmd.ID, cmd.Room, "n\\1", 2, 1, one, true)); !ok {
			t.Fatalf("AppendPresence wrote invalid JSON for %q", in)
		}
	default:
		t.Fatalf("accepted type %q: %q", cmd.Type, in)
	}
	if cmd.More && cmd.ReplyTo == nil {
		t.Fatalf("more without reply_to: %q", in)
	}
	if cmd.Offset != "" {
		// A position is digits, a dash and digits: the client frame it is
		// added to stays JSON.
		if o, ok := members(protocol.WithOffset(protocol.AppendBroadcast(nil, cmd.Data), "42", cmd.Offset)); !ok || o["offset"] == nil {
			t.Fatalf("offset %q made the client frame invalid: %q", cmd.Offset, in)
		}
	}

	// What DMB sends on: to clients, and the per-node ack to the backend.
	b := protocol.AppendBroadcast(nil, cmd.Data)
	if out, ok := members(b); !ok || !sameRaw(out["data"], orNull(cmd.Data)) {
		t.Fatalf("AppendBroadcast wrote %q for data %q", b, cmd.Data)
	}
	d := protocol.AppendDirect(nil, cmd.Data, cmd.ReplyTo, cmd.More)
	if out, ok := members(d); !ok || !sameRaw(out["data"], orNull(cmd.Data)) || !sameRaw(idMember(out, "reply_to"), cmd.ReplyTo) {
		t.Fatalf("AppendDirect wrote %q for data %q, reply_to %q", d, cmd.Data, cmd.ReplyTo)
	}
	if cmd.ID != nil {
		ack := protocol.AppendMessageAck(nil, cmd.ID, "dmb-a1", 3)
		if out, ok := members(ack); !ok || !sameRaw(out["id"], cmd.ID) {
			t.Fatalf("AppendMessageAck wrote %q for id %q", ack, cmd.ID)
		}
	}
}

func checkCommandError(t *testing.T, in []byte, err error) {
	t.Helper()
	pe := checkPayloadErrorProperties(t, in, err)
	if pe == nil {
		return // judged: not UTF-8, not JSON or not an object
	}
	// Section 6: the error event carries the id when one could be read.
	m, _ := members(in)
	if id := idMember(m, "id"); id != nil && isJSONStringOrNumber(id) && !sameRaw(pe.ID, id) {
		t.Fatalf("error %q carries id %q, payload has %q: %q", pe.Reason, pe.ID, id, in)
	}
}

// checkAcceptedIsJSON fails the test when a decoder accepted a payload that
// is not JSON.
func checkAcceptedIsJSON(t *testing.T, in []byte) {
	t.Helper()
	if !json.Valid(in) {
		t.Fatalf("accepted a payload that is not JSON: %q", in)
	}
}

// checkPayloadErrorProperties asserts what every refused backend payload
// satisfies, and returns the error for more checks when the payload is a
// JSON object, nil when it is not.
func checkPayloadErrorProperties(t *testing.T, in []byte, err error) *protocol.PayloadError {
	t.Helper()
	var pe *protocol.PayloadError
	if !errors.As(err, &pe) {
		t.Fatalf("error %T %v, want *PayloadError: %q", err, err, in)
	}
	if pe.Reason == "" || err.Error() != pe.Reason || !utf8.ValidString(pe.Reason) {
		t.Fatalf("bad reason %q (Error() %q): %q", pe.Reason, err.Error(), in)
	}
	if pe.ID != nil && !isJSONStringOrNumber(pe.ID) {
		t.Fatalf("ID %q is not a JSON string or number: %q", pe.ID, in)
	}
	// The error event to the backend reads back as the reason and the id.
	out, ok := members(protocol.AppendBackendError(nil, pe.Reason, pe.ID, "dmb-a1"))
	if !ok {
		t.Fatalf("AppendBackendError wrote invalid JSON for %q", in)
	}
	if text, _ := stringMember(out, "error"); text != pe.Reason || !sameRaw(idMember(out, "id"), pe.ID) {
		t.Fatalf("AppendBackendError reads back as %q, %q; want %q, %q", text, out["id"], pe.Reason, pe.ID)
	}

	switch {
	case !utf8.Valid(in):
		if pe.Reason != "payload is not valid UTF-8" {
			t.Fatalf("reason %q for invalid UTF-8 %q", pe.Reason, in)
		}
		return nil
	case !json.Valid(in):
		if pe.Reason != "invalid JSON" {
			t.Fatalf("reason %q for invalid JSON %q", pe.Reason, in)
		}
		return nil
	}
	if _, ok := members(in); !ok {
		if pe.Reason != "payload must be a JSON object" {
			t.Fatalf("reason %q for a non-object %q", pe.Reason, in)
		}
		return nil
	}
	return pe
}
