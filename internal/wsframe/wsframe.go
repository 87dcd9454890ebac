// Package wsframe appends final WebSocket text frames (RFC 6455, section
// 5.2) for code that writes data frames itself rather than through the
// WebSocket library: the broker, which frames a broadcast once for all its
// clients, and the load tool's clients. The library still reads, and writes
// the control frames.
package wsframe

import "encoding/binary"

const finText = 0x80 | 0x1 // FIN, opcode text

// AppendText appends payload to dst as one unmasked text frame, as a
// server sends it.
func AppendText(dst, payload []byte) []byte {
	return append(appendHeader(dst, len(payload), 0), payload...)
}

// AppendMaskedText appends payload to dst as one text frame masked with
// key, as a client sends it.
func AppendMaskedText(dst, payload []byte, key [4]byte) []byte {
	dst = appendHeader(dst, len(payload), 0x80)
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	for i := range payload {
		dst[start+i] ^= key[i&3]
	}
	return dst
}

// TextSize is the length of payload framed by AppendText.
func TextSize(payload []byte) int {
	switch n := len(payload); {
	case n <= 125:
		return 2 + n
	case n <= 0xffff:
		return 4 + n
	default:
		return 10 + n
	}
}

// IsClose tells whether p, a write the WebSocket library makes of one
// control frame, is a close frame: the library writes each control frame
// whole in one write, so its first byte is the frame's. Nothing may follow
// a close frame on the connection.
func IsClose(p []byte) bool {
	const finClose = 0x80 | 0x8
	return len(p) >= 2 && p[0] == finClose
}

// appendHeader appends the header of a text frame of n payload bytes; mask
// is 0x80 when a masking key follows.
func appendHeader(dst []byte, n int, mask byte) []byte {
	switch {
	case n <= 125:
		return append(dst, finText, mask|byte(n))
	case n <= 0xffff:
		dst = append(dst, finText, mask|126)
		return binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, finText, mask|127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}
