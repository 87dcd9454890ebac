package readall

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestIntoReadsEverythingAfterWhatBufHolds(t *testing.T) {
	long := strings.Repeat("0123456789", 300)
	for _, tc := range []struct {
		name string
		buf  []byte
		r    io.Reader
		want string
	}{
		{"empty stream, no buffer", nil, strings.NewReader(""), ""},
		{"no buffer", nil, strings.NewReader(long), long},
		{"small buffer, byte by byte", make([]byte, 0, 3), iotest.OneByteReader(strings.NewReader(long)), long},
		{"buffer with bytes kept", []byte("head:"), strings.NewReader("tail"), "head:tail"},
		{"data with EOF", make([]byte, 0, 64), iotest.DataErrReader(strings.NewReader(long)), long},
	} {
		got, err := Into(tc.buf, tc.r)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: Into = %d bytes, %v; want %d bytes", tc.name, len(got), err, len(tc.want))
		}
	}
}

func TestIntoReusesABufferLargeEnough(t *testing.T) {
	buf := make([]byte, 0, 1024)
	got, err := Into(buf, strings.NewReader("frame"))
	if err != nil || string(got) != "frame" || &got[0] != &buf[:1][0] {
		t.Fatalf("Into = %q, %v; reused the buffer: %v", got, err, &got[0] == &buf[:1][0])
	}
}

func TestIntoReturnsTheErrorWithWhatWasRead(t *testing.T) {
	boom := errors.New("boom")
	got, err := Into(nil, io.MultiReader(strings.NewReader("part"), iotest.ErrReader(boom)))
	if !errors.Is(err, boom) || !bytes.Equal(got, []byte("part")) {
		t.Fatalf("Into = %q, %v; want \"part\", boom", got, err)
	}
}
