package wsconn

import (
	"bytes"
	"testing"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// clientFrames is a stream as a client sends it: a text frame of each
// length form, a ping, a pong and an empty frame, masked.
func clientFrames() []byte {
	key := [4]byte{9, 8, 7, 6}
	var b []byte
	for _, n := range []int{0, 5, 125, 126, 300, 70000} {
		b = wsframe.AppendMasked(b, wsframe.OpText, bytes.Repeat([]byte("a"), n), key)
	}
	b = wsframe.AppendMasked(b, wsframe.OpPing, []byte("ping"), key)
	return wsframe.AppendMasked(b, wsframe.OpPong, nil, key)
}

func TestTheTrackerFollowsFramesHoweverTheReadsSplitThem(t *testing.T) {
	stream := clientFrames()
	for _, chunk := range []int{1, 2, 3, 7, 13, 64, 4096, len(stream)} {
		tr := frameTracker{on: true}
		for i := 0; i < len(stream); i += chunk {
			tr.feed(stream[i:min(i+chunk, len(stream))])
			if !tr.on {
				t.Fatalf("chunks of %d: tracking stopped at byte %d", chunk, i)
			}
		}
		if tr.nhead != 0 || tr.left != 0 {
			t.Fatalf("chunks of %d: a frame is part way in after the whole stream", chunk)
		}
	}
	// Every proper prefix that ends inside a frame says so.
	tr := frameTracker{on: true}
	if !tr.feed(stream[:len(stream)-1]) {
		t.Fatal("the last frame, one byte short, is not part way in")
	}
}

// FuzzFrameTracker feeds any bytes, split anywhere: the tracker never
// panics, and what it says of valid frames does not depend on the split.
func FuzzFrameTracker(f *testing.F) {
	f.Add(clientFrames()[:200], 3)
	f.Add([]byte{0x81, 0xfe, 0x00}, 1)
	f.Add([]byte{0xff, 0xff}, 1)
	f.Fuzz(func(t *testing.T, data []byte, chunk int) {
		chunk = max(1, chunk%64)
		whole, split := frameTracker{on: true}, frameTracker{on: true}
		inWhole := whole.feed(data)
		var inSplit bool
		for i := 0; i < len(data); i += chunk {
			inSplit = split.feed(data[i:min(i+chunk, len(data))])
			if !split.on {
				break
			}
		}
		if whole.on && split.on && inWhole != inSplit {
			t.Fatalf("whole: in a frame %v; in chunks of %d: %v", inWhole, chunk, inSplit)
		}
	})
}
