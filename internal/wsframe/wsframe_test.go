package wsframe

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// lengths covers the three length forms and their edges.
var lengths = []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 200000}

func payloadOf(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte('a' + i%26)
	}
	return p
}

// header reads a frame header: first byte, mask bit, payload length, and
// where the masking key (if any) or the payload starts.
func header(t *testing.T, f []byte) (first byte, masked bool, n, at int) {
	t.Helper()
	first, masked, n, at = f[0], f[1]&0x80 != 0, int(f[1]&0x7f), 2
	switch n {
	case 126:
		n, at = int(binary.BigEndian.Uint16(f[2:])), 4
	case 127:
		n, at = int(binary.BigEndian.Uint64(f[2:])), 10
	}
	return first, masked, n, at
}

func TestTextFramesHaveTheShortestLengthFormAndThePayload(t *testing.T) {
	for _, n := range lengths {
		p := payloadOf(n)
		f := AppendText([]byte("prefix"), p)[len("prefix"):]
		first, masked, got, at := header(t, f)
		want := 2
		switch {
		case n > 0xffff:
			want = 10
		case n > 125:
			want = 4
		}
		if first != 0x81 || masked || got != n || at != want || !bytes.Equal(f[at:], p) {
			t.Errorf("length %d: first %#x masked %v length %d header %d bytes (want %d)", n, first, masked, got, at, want)
		}
		if TextSize(p) != len(f) {
			t.Errorf("length %d: TextSize %d, frame %d bytes", n, TextSize(p), len(f))
		}
	}
}

func TestMaskedTextFramesUnmaskToThePayload(t *testing.T) {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	for _, n := range lengths {
		p := payloadOf(n)
		f := AppendMaskedText(nil, p, key)
		first, masked, got, at := header(t, f)
		if first != 0x81 || !masked || got != n || len(f) != TextSize(p)+4 {
			t.Fatalf("length %d: first %#x masked %v length %d, %d bytes", n, first, masked, got, len(f))
		}
		if !bytes.Equal(f[at:at+4], key[:]) {
			t.Fatalf("length %d: key %x", n, f[at:at+4])
		}
		body := bytes.Clone(f[at+4:])
		for i := range body {
			body[i] ^= key[i%4]
		}
		if !bytes.Equal(body, p) {
			t.Errorf("length %d: unmasked payload differs", n)
		}
		if n > 3 && bytes.Equal(f[at+4:], p) {
			t.Errorf("length %d: payload not masked", n)
		}
	}
}

func TestIsCloseKnowsOnlyTheCloseFrame(t *testing.T) {
	for _, c := range []struct {
		p    []byte
		want bool
	}{
		{[]byte{0x88, 0x00}, true},
		{[]byte{0x88, 0x02, 0x03, 0xe8}, true},
		{[]byte{0x89, 0x00}, false}, // ping
		{[]byte{0x8a, 0x00}, false}, // pong
		{AppendText(nil, []byte("x")), false},
		{[]byte{0x88}, false},
		{nil, false},
	} {
		if got := IsClose(c.p); got != c.want {
			t.Errorf("IsClose(%x) = %v", c.p, got)
		}
	}
}
