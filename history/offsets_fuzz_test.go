package history_test

import (
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/protocol"
)

// FuzzParseOffsets reads what a client sends as ?offset=: whatever it is,
// the result is at most MaxOffsets offsets of valid bkids, one per bkid,
// each of which prints as it parses, and every part is either read or
// counted bad.
func FuzzParseOffsets(f *testing.F) {
	for _, seed := range []string{
		"", "42:1733380000000-0", "42:1-2,43:3-4", "42:1-2,42:1-3", ":", ",,,", "42:", ":1-1",
		"42:18446744073709551616-0", "0:1-1", "42:1-1-1", "4x:1-1", strings.Repeat("1:1-1,", 40),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		offs, bad := history.ParseOffsets(s, protocol.ValidBKID)
		if len(offs) > history.MaxOffsets {
			t.Fatalf("%d offsets from %q", len(offs), s)
		}
		seen := map[string]bool{}
		for _, o := range offs {
			if !protocol.ValidBKID(o.BKID) || seen[o.BKID] {
				t.Fatalf("offset %v from %q: invalid or twice", o, s)
			}
			seen[o.BKID] = true
			again, _ := history.ParseOffsets(o.String(), protocol.ValidBKID)
			if len(again) != 1 || again[0] != o {
				t.Fatalf("%v prints as %q, which parses as %v", o, o.String(), again)
			}
		}
		if s != "" && len(offs)+bad > strings.Count(s, ",")+1 {
			t.Fatalf("%d read and %d bad from %d parts of %q", len(offs), bad, strings.Count(s, ",")+1, s)
		}
	})
}
