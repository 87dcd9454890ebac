// Package wsframe appends final WebSocket frames (RFC 6455, section 5.2)
// for code that writes data frames itself rather than through the
// WebSocket library: the broker, which frames a broadcast once for all its
// clients, and the load tool's clients. In the broker the library still
// reads, and writes the control frames. The load tool's clients, which must
// cost less CPU than the node they measure, also read with ParseHeader.
package wsframe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Opcodes (RFC 6455, section 5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xa
)

const (
	fin     = 0x80
	finText = fin | OpText
)

// AppendText appends payload to dst as one unmasked text frame, as a
// server sends it.
func AppendText(dst, payload []byte) []byte {
	return append(appendHeader(dst, finText, len(payload), 0), payload...)
}

// AppendMasked appends payload to dst as one final frame of opcode op,
// masked with key, as a client sends it.
func AppendMasked(dst []byte, op byte, payload []byte, key [4]byte) []byte {
	dst = appendHeader(dst, fin|op, len(payload), 0x80)
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
	return len(p) >= 2 && p[0] == fin|OpClose
}

// Header is what a frame's header says.
type Header struct {
	Fin    bool
	Op     byte
	Masked bool
	Key    [4]byte // when Masked
	Length int     // of the payload
}

// ErrProtocol wraps every error ParseHeader returns: the peer broke RFC
// 6455, and the connection should close with 1002.
var ErrProtocol = errors.New("websocket protocol error")

var (
	errReserved     = fmt.Errorf("%w: reserved bits set", ErrProtocol)
	errOpcode       = fmt.Errorf("%w: reserved opcode", ErrProtocol)
	errControl      = fmt.Errorf("%w: control frame fragmented or over 125 bytes", ErrProtocol)
	errLength       = fmt.Errorf("%w: 64-bit length over 2^62", ErrProtocol)
	errLongerLength = fmt.Errorf("%w: length not in its shortest form", ErrProtocol)
)

// ParseHeader reads the frame header at the start of b and returns it with
// its size in bytes; n is 0 when b holds only part of it. No extension is
// negotiated, so a reserved bit set is an error; so is a length over 2^62,
// which no peer sends and which need not fit an int.
func ParseHeader(b []byte) (h Header, n int, err error) {
	if len(b) < 2 {
		return Header{}, 0, nil
	}
	if b[0]&0x70 != 0 {
		return Header{}, 0, errReserved
	}
	h.Fin, h.Op, h.Masked = b[0]&fin != 0, b[0]&0xf, b[1]&0x80 != 0
	switch h.Op {
	case OpContinuation, OpText, OpBinary:
	case OpClose, OpPing, OpPong:
		if !h.Fin || b[1]&0x7f > 125 {
			return Header{}, 0, errControl
		}
	default:
		return Header{}, 0, errOpcode
	}
	n = 2
	switch l := int(b[1] & 0x7f); l {
	case 126:
		if len(b) < 4 {
			return Header{}, 0, nil
		}
		h.Length, n = int(binary.BigEndian.Uint16(b[2:])), 4
		if h.Length <= 125 {
			return Header{}, 0, errLongerLength
		}
	case 127:
		if len(b) < 10 {
			return Header{}, 0, nil
		}
		l64 := binary.BigEndian.Uint64(b[2:])
		if l64 > 1<<62 || uint64(int(l64)) != l64 {
			return Header{}, 0, errLength
		}
		h.Length, n = int(l64), 10
		if h.Length <= 0xffff {
			return Header{}, 0, errLongerLength
		}
	default:
		h.Length = l
	}
	if h.Masked {
		if len(b) < n+4 {
			return Header{}, 0, nil
		}
		copy(h.Key[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}

// appendHeader appends the header of a frame whose first byte is first,
// of n payload bytes; mask is 0x80 when a masking key follows.
func appendHeader(dst []byte, first byte, n int, mask byte) []byte {
	switch {
	case n <= 125:
		return append(dst, first, mask|byte(n))
	case n <= 0xffff:
		dst = append(dst, first, mask|126)
		return binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, first, mask|127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}
