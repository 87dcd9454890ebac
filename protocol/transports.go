package protocol

import "strconv"

// Transports besides WebSocket (docs/protocol.md, section 12).

// EventClose is the last frame DMB sends on a transport without close
// frames of its own (a TCP connection, an event stream): the close code
// and reason a WebSocket's close frame would carry.
const EventClose = "dmb:close"

// AppendClose appends {"event":"dmb:close","code":...,"reason":...}.
func AppendClose(dst []byte, code int, reason string) []byte {
	dst = append(dst, `{"event":"dmb:close","code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, TruncateReason(reason))
	return append(dst, '}')
}
