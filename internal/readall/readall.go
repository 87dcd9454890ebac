// Package readall reads a stream to its end into a buffer the caller keeps,
// so that reading one message after another reuses one buffer.
package readall

import (
	"io"
	"slices"
)

// minGrow is the least a full buffer grows by.
const minGrow = 512

// Into reads r until io.EOF, appending to buf, which grows as needed, and
// returns buf. At EOF the error is nil.
func Into(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(len(buf), minGrow))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
