package broker

import "encoding/binary"

// appendTextFrame appends payload to dst as one unmasked, final WebSocket
// text frame (RFC 6455, section 5.2), as a server sends it.
//
// The broker frames the data frames of a plain connection itself, instead
// of letting the WebSocket library frame them one client at a time: a
// broadcast is framed once and the same bytes are written to every client
// (see Broker.Broadcast), and a writer frames a batch straight into the
// buffer it writes. The library still writes its control frames (pong,
// close) and reads; corkConn keeps both kinds of write in order.
func appendTextFrame(dst, payload []byte) []byte {
	const finText = 0x80 | 0x1 // FIN, opcode text
	n := len(payload)
	switch {
	case n <= 125:
		dst = append(dst, finText, byte(n))
	case n <= 0xffff:
		dst = append(dst, finText, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, finText, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, payload...)
}

// textFrameSize is the length of payload framed by appendTextFrame.
func textFrameSize(payload []byte) int {
	switch n := len(payload); {
	case n <= 125:
		return 2 + n
	case n <= 0xffff:
		return 4 + n
	default:
		return 10 + n
	}
}

// isCloseFrame tells whether p, one write of the WebSocket library to a
// plain connection, is a close frame: the library writes each control frame
// whole in one write (see leanWriter), so its first byte is the frame's.
func isCloseFrame(p []byte) bool {
	const finClose = 0x80 | 0x8
	return len(p) >= 2 && p[0] == finClose
}
