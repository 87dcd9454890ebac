package protocol

// Sessions that survive a reconnect (docs/protocol.md, section 11).

// EventSession carries a session token that replaces the client's, after
// its rooms changed.
const EventSession = "dmb:session"

// TypeResumed is what a node publishes on a backend's downlink when it
// resumed a session of one of the backend's clients: the node that holds
// an older connection under the cid closes it with 4010.
const TypeResumed = "resumed"

// ReasonResumed is the close reason of 4010.
const ReasonResumed = "session resumed elsewhere"

// Connected describes a dmb:connected frame. Session is the client's
// session token ("" when DMB could not sign one); Resumed and Recovered are
// written with it.
type Connected struct {
	CID, Service, Session string
	Resumed, Recovered    bool
}

// AppendSession appends {"event":"dmb:session","session":...}.
func AppendSession(dst []byte, token string) []byte {
	dst = append(dst, `{"event":"dmb:session","session":"`...)
	dst = append(dst, token...) // base64url and dots: nothing to escape
	return append(dst, `"}`...)
}

// AppendResumed appends the resumed command that closes an older
// connection of cid, published by node, which holds the newer one.
func AppendResumed(dst []byte, cid, node string) []byte {
	dst = append(dst, `{"type":"resumed","cid":`...)
	dst = appendString(dst, cid)
	dst = append(dst, `,"node":`...)
	dst = appendString(dst, node)
	return append(dst, '}')
}

// WithOffset returns frame, a client frame (a JSON object), with "offset"
// added as its last member: the message's position in the history of
// bkid. frame's own array is not changed, since others may share it.
func WithOffset(frame []byte, bkid, position string) []byte {
	out := make([]byte, 0, len(frame)+len(`,"offset":":"`)+len(bkid)+len(position))
	out = append(out, frame[:len(frame)-1]...)
	out = append(out, `,"offset":"`...)
	out = append(out, bkid...)
	out = append(out, ':')
	out = append(out, position...)
	return append(out, `"}`...)
}

// validPosition tells whether s is a history position, "ms-seq" in
// decimal digits.
func validPosition(s string) bool {
	dash := -1
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '-' && dash < 0 && i > 0:
			dash = i
		case c < '0' || c > '9':
			return false
		}
	}
	return dash > 0 && dash < len(s)-1 && len(s) <= 41
}
