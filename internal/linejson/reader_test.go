package linejson_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/dmb-broker/dmb/internal/linejson"
)

// chunked reads r in the sizes of sizes, over and over (a size of 0 reads
// one byte), as a TCP stream may split its bytes anywhere.
type chunked struct {
	r     io.Reader
	sizes []byte
	i     int
}

func (c *chunked) Read(p []byte) (int, error) {
	n := 1
	if len(c.sizes) > 0 {
		n = max(1, int(c.sizes[c.i%len(c.sizes)]))
		c.i++
	}
	return c.r.Read(p[:min(n, len(p))])
}

// result is what reading every line gives: each line, or "!" for one too
// long, then the error that ended the stream.
func readAll(r *linejson.Reader) ([]string, error) {
	var out []string
	for {
		line, err := r.Next()
		if r.Started() != 0 {
			return out, errors.New("Started is set after Next returned")
		}
		switch {
		case errors.Is(err, linejson.ErrTooLong):
			out = append(out, "!")
		case err != nil:
			return out, err
		default:
			out = append(out, string(line))
		}
	}
}

// expected is what readAll must give for in and max: the lines before a
// "\n", less a "\r" at their end; a line over max is "!"; a last line
// without "\n" is dropped, unless it is already too long with a "\r\n"
// still to come.
func expected(in string, max int) []string {
	parts := strings.Split(in, "\n")
	var out []string
	for _, p := range parts[:len(parts)-1] {
		p = strings.TrimSuffix(p, "\r")
		if len(p) > max {
			p = "!"
		}
		out = append(out, p)
	}
	if len(parts[len(parts)-1]) > max+1 {
		out = append(out, "!")
	}
	return out
}

func TestReaderReadsLinesInAnyChunks(t *testing.T) {
	cases := []struct {
		in   string
		max  int
		want []string
	}{
		{"a\nbc\r\n\n", 8, []string{"a", "bc", ""}},
		{`{"event":"dmb:hello"}` + "\n", 64, []string{`{"event":"dmb:hello"}`}},
		{"abcd\nok\n", 3, []string{"!", "ok"}},
		{"abc\r\nok\n", 3, []string{"abc", "ok"}},
		{"abcdefgh\nok\n", 3, []string{"!", "ok"}},
		{"abcdefghijklmnop", 3, []string{"!"}},
		{"partial", 64, nil},
	}
	for _, c := range cases {
		for _, sizes := range [][]byte{nil, {1}, {2, 5}, {255}} {
			got, err := readAll(linejson.NewReader(&chunked{r: strings.NewReader(c.in), sizes: sizes}, c.max))
			if err != io.EOF {
				t.Fatalf("%q in %v: ended with %v, want EOF", c.in, sizes, err)
			}
			if strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
				t.Fatalf("%q (max %d) in chunks of %v = %q, want %q", c.in, c.max, sizes, got, c.want)
			}
		}
	}
}

func TestReaderReturnsTheStreamsError(t *testing.T) {
	boom := errors.New("boom")
	r := linejson.NewReader(io.MultiReader(strings.NewReader("one\ntw"), iotest.ErrReader(boom)), 16)
	got, err := readAll(r)
	if err != boom || len(got) != 1 || got[0] != "one" {
		t.Fatalf("got %q, %v; want [one], boom", got, err)
	}
}

func TestReaderSaysWhenALineHasBegun(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close()
	r := linejson.NewReader(pr, 64)
	done := make(chan []byte)
	go func() {
		line, _ := r.Next()
		done <- bytes.Clone(line)
	}()
	if r.Started() != 0 {
		t.Fatal("Started set before any byte came")
	}
	_, _ = pw.Write([]byte(`{"event":`))
	// The reader waits for the rest: Started says since when.
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for r.Started() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Started not set while a line waits for its end")
		}
		<-tick.C
	}
	_, _ = pw.Write([]byte("1}\n"))
	if line := <-done; string(line) != `{"event":1}` {
		t.Fatalf("line = %q", line)
	}
	if r.Started() != 0 {
		t.Fatal("Started still set once the line was read")
	}
}

// FuzzReader checks that the reader splits any stream, arriving in any
// chunks, into the lines it holds, each over the limit reported once and
// skipped, and never returns a line over the limit. Seeds are in
// testdata/fuzz/FuzzReader.
func FuzzReader(f *testing.F) {
	f.Add([]byte("a\nbc\r\n\n"), []byte{1, 2}, uint8(4))
	f.Add([]byte(`{"event":"dmb:hello","service":"chat"}`+"\n"+`{"event":"dmb:message","data":1}`+"\r\n"), []byte{7}, uint8(64))
	f.Add([]byte("toolongline\nok\n"), []byte{3}, uint8(3))
	f.Add([]byte("\r\r\n\n\r"), []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, in, sizes []byte, limit uint8) {
		max := int(limit)
		r := linejson.NewReader(&chunked{r: bytes.NewReader(in), sizes: sizes}, max)
		var got []string
		for {
			line, err := r.Next()
			if errors.Is(err, linejson.ErrTooLong) {
				got = append(got, "!")
				continue
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("error %v", err)
			}
			if len(line) > max || bytes.IndexByte(line, '\n') >= 0 {
				t.Fatalf("line %q over %d or with a line break", line, max)
			}
			got = append(got, string(line))
		}
		want := expected(string(in), max)
		if len(got) != len(want) {
			t.Fatalf("got %q, want %q", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
	})
}
