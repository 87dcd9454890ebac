package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
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
		f := AppendMasked(nil, OpText, p, key)
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

func TestParseHeaderReadsWhatTheAppendFunctionsWrite(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for _, n := range lengths {
		p := payloadOf(n)
		for _, c := range []struct {
			name   string
			frame  []byte
			op     byte
			masked bool
		}{
			{"text", AppendText(nil, p), OpText, false},
			{"masked text", AppendMasked(nil, OpText, p, key), OpText, true},
			{"masked binary", AppendMasked(nil, OpBinary, p, key), OpBinary, true},
		} {
			h, hn, err := ParseHeader(c.frame)
			if err != nil || hn == 0 {
				t.Fatalf("%s of %d: n %d, %v", c.name, n, hn, err)
			}
			if !h.Fin || h.Op != c.op || h.Masked != c.masked || h.Length != n || hn+n != len(c.frame) {
				t.Errorf("%s of %d: %+v, header %d bytes of %d", c.name, n, h, hn, len(c.frame))
			}
			if c.masked && h.Key != key {
				t.Errorf("%s of %d: key %x", c.name, n, h.Key)
			}
			for k := range hn {
				if h, m, err := ParseHeader(c.frame[:k]); m != 0 || err != nil {
					t.Fatalf("%s of %d, first %d bytes: %+v, n %d, %v; want more bytes asked for", c.name, n, k, h, m, err)
				}
			}
		}
	}
	for _, op := range []byte{OpClose, OpPing, OpPong} {
		f := AppendMasked(nil, op, []byte{3, 0xe8}, key)
		if h, n, err := ParseHeader(f); err != nil || h.Op != op || h.Length != 2 || n != 6 {
			t.Errorf("opcode %#x: %+v, n %d, %v", op, h, n, err)
		}
	}
}

func TestParseHeaderRefusesWhatTheRFCForbids(t *testing.T) {
	long := func(n uint64) []byte { return binary.BigEndian.AppendUint64([]byte{0x82, 127}, n) }
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"RSV1", []byte{0xc1, 0}},
		{"RSV3", []byte{0x91, 0}},
		{"opcode 3", []byte{0x83, 0}},
		{"opcode 0xb", []byte{0x8b, 0}},
		{"fragmented ping", []byte{0x09, 0}},
		{"close of 126 bytes", []byte{0x88, 126, 0, 126}},
		{"length 125 in 16 bits", []byte{0x82, 126, 0, 125}},
		{"length 0xffff in 64 bits", long(0xffff)},
		{"length with the top bit", long(1 << 63)},
		{"length over 2^62", long(1<<62 + 1)},
	} {
		if _, n, err := ParseHeader(c.b); !errors.Is(err, ErrProtocol) || n != 0 {
			t.Errorf("%s (%x): n %d, %v; want a protocol error", c.name, c.b, n, err)
		}
	}
}

// FuzzParseHeader checks, for any bytes, that a header is either refused,
// asked more bytes of, or read with a size that fits and a length that
// makes sense, and that every shorter prefix of a read header asks for
// more bytes.
func FuzzParseHeader(f *testing.F) {
	key := [4]byte{9, 8, 7, 6}
	for _, n := range []int{0, 5, 125, 126, 0x10000} {
		f.Add(AppendText(nil, payloadOf(n))[:min(14, TextSize(payloadOf(n)))])
		f.Add(AppendMasked(nil, OpPing, payloadOf(min(n, 125)), key)[:6])
	}
	f.Add([]byte{0x88, 0x82, 1, 2, 3, 4, 3, 0xe8})
	f.Add([]byte{0x01, 0x7e, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		switch {
		case err != nil:
			if !errors.Is(err, ErrProtocol) || n != 0 {
				t.Fatalf("n %d with error %v", n, err)
			}
			return
		case n == 0:
			return
		}
		if n > len(b) || n < 2 || n > 14 || h.Length < 0 || h.Masked != (b[1]&0x80 != 0) {
			t.Fatalf("%x: %+v, n %d", b, h, n)
		}
		if h.Op >= OpClose && (h.Length > 125 || !h.Fin) {
			t.Fatalf("%x: control frame %+v", b, h)
		}
		for k := range n {
			if _, m, err := ParseHeader(b[:k]); m != 0 || err != nil {
				t.Fatalf("%x: prefix of %d bytes: n %d, %v", b, k, m, err)
			}
		}
	})
}
