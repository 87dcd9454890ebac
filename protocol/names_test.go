package protocol_test

import (
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

func TestServiceNameIsOneTo64CharsOfLowerAlnumDotDashUnderscore(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"example", "chat", true},
		{"one char", "a", true},
		{"digits", "0123456789", true},
		{"all allowed punctuation", "a_b.c-d", true},
		{"only punctuation", "._-", true},
		{"64 chars", strings.Repeat("s", 64), true},
		{"65 chars", strings.Repeat("s", 65), false},
		{"empty", "", false},
		{"upper case", "Chat", false},
		{"colon", "chat:1", false},
		{"slash", "chat/1", false},
		{"space", "chat room", false},
		{"glob star", "chat*", false},
		{"NUL", "chat\x00", false},
		{"non-ASCII letter", "caf\u00e9", false},
		{"Kelvin sign", "\u212a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := protocol.ValidService(tt.in); got != tt.want {
				t.Errorf("ValidService(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestNonceIsOneTo128CharsOfAlnumDotColonDashUnderscore(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"example", "n-81f2", true},
		{"one char", "x", true},
		{"upper and lower case", "AbCxYz", true},
		{"all allowed punctuation", "a_b.c:d-e", true},
		{"uuid", "7c9e6679-7425-40de-944b-e07fc1f90ae7", true},
		{"128 chars", strings.Repeat("N", 128), true},
		{"129 chars", strings.Repeat("N", 129), false},
		{"empty", "", false},
		{"space", "n 1", false},
		{"slash", "n/1", false},
		{"glob star", "n*", false},
		{"glob question mark", "n?", false},
		{"glob bracket", "n[1]", false},
		{"quote", `n"1`, false},
		{"newline", "n\n1", false},
		{"non-ASCII", "n\u00e9", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := protocol.ValidNonce(tt.in); got != tt.want {
				t.Errorf("ValidNonce(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestBKIDIsPositiveDecimalOfAtMost19DigitsWithoutLeadingZero(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"example", "42", true},
		{"one", "1", true},
		{"nine", "9", true},
		{"max int64", "9223372036854775807", true},
		{"19 digits", "1000000000000000000", true},
		{"20 digits", "10000000000000000000", false},
		{"zero", "0", false},
		{"leading zero", "042", false},
		{"empty", "", false},
		{"negative", "-1", false},
		{"plus sign", "+1", false},
		{"letter", "4x", false},
		{"hex", "0x2a", false},
		{"exponent", "4e2", false},
		{"decimal point", "4.0", false},
		{"space", " 42", false},
		{"register", "register", false},
		{"uplink channel suffix", "uplink:1", false},
		{"non-ASCII digit", "\u0664\u0662", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := protocol.ValidBKID(tt.in); got != tt.want {
				t.Errorf("ValidBKID(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestChannelNamesFollowSection1(t *testing.T) {
	tests := []struct {
		prefix                                 string
		register, registerReply, down, up, key string
	}{
		{"dmb", "dmb:register", "dmb:register:n-81f2", "dmb:42", "dmb:uplink:42", "{dmb}:bkid:42:service"},
		{"app.prod", "app.prod:register", "app.prod:register:n-81f2", "app.prod:42", "app.prod:uplink:42", "{app.prod}:bkid:42:service"},
		{"a:b", "a:b:register", "a:b:register:n-81f2", "a:b:42", "a:b:uplink:42", "{a:b}:bkid:42:service"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			ch := protocol.NewChannels(tt.prefix)
			for _, c := range []struct{ what, got, want string }{
				{"Prefix()", ch.Prefix(), tt.prefix},
				{"Register()", ch.Register(), tt.register},
				{"RegisterReply(n-81f2)", ch.RegisterReply("n-81f2"), tt.registerReply},
				{"Downlink(42)", ch.Downlink("42"), tt.down},
				{"Uplink(42)", ch.Uplink("42"), tt.up},
				{"Key(bkid, 42, service)", ch.Key("bkid", "42", "service"), tt.key},
			} {
				if c.got != c.want {
					t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
				}
			}
		})
	}
}

func TestDownlinkPatternMatchesEveryDownlinkChannelAndNothingElseDMBUses(t *testing.T) {
	ch := protocol.NewChannels("dmb")
	pattern := ch.DownlinkPattern()
	if pattern != "dmb:[1-9]*" {
		t.Errorf("DownlinkPattern() = %q, want %q", pattern, "dmb:[1-9]*")
	}
	for _, channel := range []string{ch.Downlink("1"), ch.Downlink("42"), ch.Downlink("9223372036854775807")} {
		if !redisGlobMatch(pattern, channel) {
			t.Errorf("pattern %q does not match downlink channel %q", pattern, channel)
		}
	}
	for _, channel := range []string{
		ch.Register(), ch.RegisterReply("n-81f2"), ch.RegisterReply("1"), ch.Uplink("42"),
		"dmb:0", "dmb:", "dmb", "other:42", "dmbx:42",
	} {
		if redisGlobMatch(pattern, channel) {
			t.Errorf("pattern %q matches %q, which is not a downlink channel", pattern, channel)
		}
	}
}

func TestDownlinkPatternEscapesGlobCharactersInThePrefix(t *testing.T) {
	tests := []struct {
		prefix, want string
		others       []string // channels a literal reading of the prefix must not match
	}{
		{`dmb`, `dmb:[1-9]*`, nil},
		{`a*b`, `a\*b:[1-9]*`, []string{"axyzb:42", "ab:42"}},
		{`a?b`, `a\?b:[1-9]*`, []string{"axb:42"}},
		{`[ab]`, `\[ab\]:[1-9]*`, []string{"a:42", "b:42"}},
		{`a]b`, `a\]b:[1-9]*`, nil},
		{`a\b`, `a\\b:[1-9]*`, []string{"ab:42"}},
		{`*`, `\*:[1-9]*`, []string{"dmb:42", ":42"}},
		{`a^-b`, `a^-b:[1-9]*`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			ch := protocol.NewChannels(tt.prefix)
			pattern := ch.DownlinkPattern()
			if pattern != tt.want {
				t.Errorf("DownlinkPattern() = %q, want %q", pattern, tt.want)
			}
			if down := ch.Downlink("42"); !redisGlobMatch(pattern, down) {
				t.Errorf("pattern %q does not match %q", pattern, down)
			}
			for _, other := range append(tt.others, ch.Uplink("42"), ch.Register()) {
				if redisGlobMatch(pattern, other) {
					t.Errorf("pattern %q matches %q", pattern, other)
				}
			}
		})
	}
}

func TestDownlinkBKIDAcceptsOnlyPrefixColonValidBKID(t *testing.T) {
	tests := []struct {
		prefix, channel string
		bkid            string
		ok              bool
	}{
		{"dmb", "dmb:42", "42", true},
		{"dmb", "dmb:1", "1", true},
		{"dmb", "dmb:9223372036854775807", "9223372036854775807", true},
		{"a:b", "a:b:7", "7", true},
		{"a*b", "a*b:7", "7", true},
		{"dmb", "dmb:uplink:1", "", false},
		{"dmb", "dmb:register", "", false},
		{"dmb", "dmb:register:n-81f2", "", false},
		{"dmb", "dmb:01", "", false},
		{"dmb", "dmb:0", "", false},
		{"dmb", "dmb:4x", "", false},
		{"dmb", "dmb:42:x", "", false},
		{"dmb", "dmb:", "", false},
		{"dmb", "dmb", "", false},
		{"dmb", "dmb42", "", false},
		{"dmb", "other:42", "", false},
		{"dmb", "dmbx:42", "", false},
		{"dmb", "xdmb:42", "", false},
		{"dmb", "DMB:42", "", false},
		{"a:b", "a:42", "", false},
		{"a*b", "axb:7", "", false},
		{"dmb", "dmb:10000000000000000000", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.prefix+"/"+tt.channel, func(t *testing.T) {
			bkid, ok := protocol.NewChannels(tt.prefix).DownlinkBKID(tt.channel)
			if bkid != tt.bkid || ok != tt.ok {
				t.Errorf("DownlinkBKID(%q) = %q, %v, want %q, %v", tt.channel, bkid, ok, tt.bkid, tt.ok)
			}
		})
	}
}

func TestDownlinkBKIDReadsBackDownlink(t *testing.T) {
	for _, prefix := range []string{"dmb", "a:b", "a*b", "x"} {
		ch := protocol.NewChannels(prefix)
		for _, bkid := range []string{"1", "42", "9223372036854775807"} {
			got, ok := ch.DownlinkBKID(ch.Downlink(bkid))
			if !ok || got != bkid {
				t.Errorf("prefix %q: DownlinkBKID(Downlink(%q)) = %q, %v", prefix, bkid, got, ok)
			}
			if _, ok := ch.DownlinkBKID(ch.Uplink(bkid)); ok {
				t.Errorf("prefix %q: DownlinkBKID(Uplink(%q)) is ok", prefix, bkid)
			}
		}
	}
}

// redisGlobMatch matches s against a Redis glob pattern the way Redis's
// stringmatchlen does for PSUBSCRIBE: *, ?, [...] with ranges and ^, and \
// escaping the next character.
func redisGlobMatch(pattern, s string) bool {
	for len(pattern) > 0 {
		switch pattern[0] {
		case '*':
			for len(pattern) > 1 && pattern[1] == '*' {
				pattern = pattern[1:]
			}
			if len(pattern) == 1 {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if redisGlobMatch(pattern[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
			s = s[1:]
			pattern = pattern[1:]
		case '[':
			if len(s) == 0 {
				return false
			}
			pattern = pattern[1:]
			not := len(pattern) > 0 && pattern[0] == '^'
			if not {
				pattern = pattern[1:]
			}
			match := false
			for len(pattern) > 0 && pattern[0] != ']' {
				switch {
				case pattern[0] == '\\' && len(pattern) >= 2:
					pattern = pattern[1:]
					match = match || pattern[0] == s[0]
				case len(pattern) >= 3 && pattern[1] == '-':
					lo, hi := pattern[0], pattern[2]
					if lo > hi {
						lo, hi = hi, lo
					}
					match = match || s[0] >= lo && s[0] <= hi
					pattern = pattern[2:]
				default:
					match = match || pattern[0] == s[0]
				}
				pattern = pattern[1:]
			}
			if len(pattern) > 0 {
				pattern = pattern[1:] // the closing ]
			}
			if match == not {
				return false
			}
			s = s[1:]
		case '\\':
			if len(pattern) >= 2 {
				pattern = pattern[1:]
			}
			fallthrough
		default:
			if len(s) == 0 || pattern[0] != s[0] {
				return false
			}
			s = s[1:]
			pattern = pattern[1:]
		}
	}
	return len(s) == 0
}

func TestRedisGlobMatchHelper(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"a*", "abc", true},
		{"a*c", "abc", true},
		{"a*d", "abc", false},
		{"a?c", "abc", true},
		{"[1-9]*", "42", true},
		{"[1-9]*", "042", false},
		{"[^a]", "b", true},
		{"[^a]", "a", false},
		{`\*`, "*", true},
		{`\*`, "x", false},
		{`[\]]`, "]", true},
		{"abc", "abc", true},
		{"abc", "abcd", false},
	}
	for _, tt := range tests {
		if got := redisGlobMatch(tt.pattern, tt.s); got != tt.want {
			t.Errorf("redisGlobMatch(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}
