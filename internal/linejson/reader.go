// Package linejson reads a stream of lines, each at most a given size, as
// a TCP client of DMB sends its frames: one JSON frame per line
// (docs/protocol.md, section 12). It knows nothing of JSON: a line is the
// bytes before a "\n", less a "\r" before it.
package linejson

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"time"
)

// ErrTooLong is Next's error for a line over the limit. The reader then
// skips the rest of that line: the next call returns the line after it.
var ErrTooLong = errors.New("line too long")

// Reader reads lines from a stream. One goroutine calls Next; Started may
// be called from any.
type Reader struct {
	r   io.Reader
	max int

	buf        []byte // buf[start:end] is read and not yet returned
	start, end int
	scanned    int   // bytes of buf[start:end] known to hold no '\n'
	skipping   bool  // dropping the rest of a line over the limit
	err        error // what the stream's last read returned, once buf is used up

	// started is when Next began to wait for the rest of a line that has
	// begun (UnixNano), 0 when it waits for none.
	started atomic.Int64
}

// A Reader's buffer starts small and grows up to the limit, for a long
// line; it goes back to small once such a line has been read.
const (
	minBuffer  = 512
	keptBuffer = 4 << 10
)

// NewReader returns a reader of lines from r of at most max bytes each,
// not counting the "\n" or "\r\n" that ends them.
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: r, max: max}
}

// Next returns the next line, without its end of line; it is valid until
// the next call. A line over the limit is ErrTooLong. Once the stream
// ends, Next returns the lines already read and then the stream's error
// (io.EOF when it just ended); a last line without "\n" is dropped.
func (l *Reader) Next() ([]byte, error) {
	defer l.started.Store(0)
	for {
		if i := bytes.IndexByte(l.buf[l.start+l.scanned:l.end], '\n'); i >= 0 {
			line := l.buf[l.start : l.start+l.scanned+i]
			l.start += l.scanned + i + 1
			l.scanned = 0
			if l.skipping {
				l.skipping = false
				continue
			}
			line = bytes.TrimSuffix(line, []byte{'\r'})
			if len(line) > l.max {
				return nil, ErrTooLong
			}
			return line, nil
		}
		l.scanned = l.end - l.start
		switch {
		case l.skipping:
			l.start, l.end, l.scanned = 0, 0, 0
		case l.scanned > l.max+1: // even with "\r\n" after it, too long
			l.skipping = true
			l.start, l.end, l.scanned = 0, 0, 0
			return nil, ErrTooLong
		}
		if l.err != nil {
			return nil, l.err
		}
		if err := l.fill(); err != nil {
			l.err = err
		}
	}
}

// fill reads once from the stream into the buffer, after what is in it.
func (l *Reader) fill() error {
	if l.start > 0 {
		l.end = copy(l.buf, l.buf[l.start:l.end])
		l.start = 0
	}
	if l.end == 0 && cap(l.buf) > keptBuffer {
		l.buf = nil // a long line was read: do not keep its memory
	}
	if l.end == len(l.buf) {
		size := max(minBuffer, 2*len(l.buf))
		if !l.skipping {
			size = min(size, l.max+2)
		}
		size = max(size, l.end+1)
		grown := make([]byte, size)
		copy(grown, l.buf[:l.end])
		l.buf = grown
	}
	if l.end > 0 || l.skipping {
		l.started.CompareAndSwap(0, time.Now().UnixNano())
	}
	n, err := l.r.Read(l.buf[l.end:])
	l.end += n
	return err
}

// Started returns when the reader began to wait for the rest of a line
// that has begun (UnixNano), or 0 when it waits for no such line: the
// caller may drop a connection whose client takes too long to finish one.
func (l *Reader) Started() int64 { return l.started.Load() }
