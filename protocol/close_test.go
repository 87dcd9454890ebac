package protocol_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dmb-broker/dmb/protocol"
)

func TestCloseCodesAreTheOnesOfSection3(t *testing.T) {
	tests := []struct {
		name string
		got  int
		want int
	}{
		{"node shutting down", protocol.CloseGoingAway, 1001},
		{"binary frame", protocol.CloseUnsupported, 1003},
		{"policy", protocol.ClosePolicy, 1008},
		{"frame too big", protocol.CloseTooBig, 1009},
		{"internal error", protocol.CloseInternal, 1011},
		{"token missing, invalid or expired", protocol.CloseUnauthorized, 4001},
		{"service never registered", protocol.CloseUnknownSvc, 4004},
		{"slow consumer", protocol.CloseSlowConsumer, 4008},
		{"kicked by the backend", protocol.CloseKicked, 4009},
		{"no live backend", protocol.CloseNoLiveBackend, 4503},
		{"normal (RFC 6455)", protocol.CloseNormal, 1000},
		{"abnormal (RFC 6455, never sent)", protocol.CloseAbnormal, 1006},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: close code %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestCloseReasonIsAtMost123BytesAndNeverSplitsUTF8(t *testing.T) {
	if protocol.MaxCloseReason != 123 {
		t.Fatalf("MaxCloseReason = %d, want 123 (125-byte control frame payload minus the 2-byte code)", protocol.MaxCloseReason)
	}
	a := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"example", "banned", "banned"},
		{"122 bytes", a(122), a(122)},
		{"123 bytes", a(123), a(123)},
		{"124 bytes", a(124), a(123)},
		{"1000 bytes", a(1000), a(123)},
		{"2-byte rune ends at 123", a(121) + "é" + "b", a(121) + "é"},
		{"2-byte rune straddles 123", a(122) + "é", a(122)},
		{"3-byte rune ends at 123", a(120) + "€" + "b", a(120) + "€"},
		{"3-byte rune straddles 123 by one", a(121) + "€", a(121)},
		{"3-byte rune straddles 123 by two", a(122) + "€", a(122)},
		{"4-byte rune ends at 123", a(119) + "😀" + "b", a(119) + "😀"},
		{"4-byte rune straddles 123 by one", a(120) + "😀", a(120)},
		{"4-byte rune straddles 123 by two", a(121) + "😀", a(121)},
		{"4-byte rune straddles 123 by three", a(122) + "😀", a(122)},
		{"only 2-byte runes", strings.Repeat("é", 100), strings.Repeat("é", 61)},
		{"only 3-byte runes", strings.Repeat("€", 100), strings.Repeat("€", 41)},
		{"only 4-byte runes", strings.Repeat("😀", 100), strings.Repeat("😀", 30)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := protocol.TruncateReason(tt.in); got != tt.want {
				t.Errorf("TruncateReason(%q)\n got %q (%d bytes)\nwant %q (%d bytes)", tt.in, got, len(got), tt.want, len(tt.want))
			}
		})
	}
}

func TestCloseReasonKeepsTheLongestWholeRunePrefix(t *testing.T) {
	// Every alignment of every rune width around the 123-byte limit.
	for _, r := range []string{"a", "é", "€", "😀"} {
		for pad := 0; pad < 8; pad++ {
			in := strings.Repeat("x", pad) + strings.Repeat(r, 200/len(r))
			got := protocol.TruncateReason(in)
			if len(got) > protocol.MaxCloseReason {
				t.Errorf("TruncateReason(%q) is %d bytes", in, len(got))
			}
			if !utf8.ValidString(got) || !strings.HasPrefix(in, got) {
				t.Errorf("TruncateReason(%q) = %q: not a whole-rune prefix", in, got)
			}
			if next := in[len(got):]; len(next) > 0 {
				_, size := utf8.DecodeRuneInString(next)
				if len(got)+size <= protocol.MaxCloseReason {
					t.Errorf("TruncateReason(%q) = %q: one more rune would fit", in, got)
				}
			}
		}
	}
}
