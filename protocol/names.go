package protocol

import "strings"

// Limits on names from docs/protocol.md, section 2.
const (
	MaxServiceLen = 64
	MaxNonceLen   = 128
	// MaxBKIDLen bounds a decimal bkid: 19 digits hold any int64.
	MaxBKIDLen = 19
	maxBKID    = "9223372036854775807"
)

// ValidService reports whether s is a service name: 1-64 chars of [a-z0-9_.-].
func ValidService(s string) bool {
	if len(s) == 0 || len(s) > MaxServiceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// ValidNonce reports whether s is a registration nonce: 1-128 chars of
// [A-Za-z0-9_.:-].
func ValidNonce(s string) bool {
	if len(s) == 0 || len(s) > MaxNonceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '.' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// ValidBKID reports whether s is a bkid: a positive decimal number without
// leading zeros, as DMB assigns them.
func ValidBKID(s string) bool {
	if len(s) == 0 || len(s) > MaxBKIDLen || s[0] == '0' || len(s) == MaxBKIDLen && s > maxBKID {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Channels names the Redis channels and keys under one prefix (DMB_PREFIX).
type Channels struct {
	prefix string
}

// NewChannels returns the channel and key names under prefix.
func NewChannels(prefix string) Channels { return Channels{prefix: prefix} }

// Prefix returns the prefix without its trailing colon.
func (c Channels) Prefix() string { return c.prefix }

// Register is the channel backends publish bk_connect and bk_disconnect on.
func (c Channels) Register() string { return c.prefix + ":register" }

// RegisterReply is the channel the answer to one bk_connect goes to.
func (c Channels) RegisterReply(nonce string) string { return c.prefix + ":register:" + nonce }

// Downlink is the channel a backend publishes broadcast, direct and kick on.
func (c Channels) Downlink(bkid string) string { return c.prefix + ":" + bkid }

// Uplink is the channel DMB publishes a backend's events on.
func (c Channels) Uplink(bkid string) string { return c.prefix + ":uplink:" + bkid }

// DownlinkPattern matches every downlink channel and nothing else DMB uses:
// the part after the prefix starts with a digit, while "register" and
// "uplink" do not. DownlinkBKID must still check the whole suffix.
func (c Channels) DownlinkPattern() string { return globEscape(c.prefix) + ":[1-9]*" }

// DownlinkBKID returns the bkid of a downlink channel, or false when channel
// is not one (a pattern match such as "dmb:4x" is not).
func (c Channels) DownlinkBKID(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, c.prefix+":")
	if !ok || !ValidBKID(rest) {
		return "", false
	}
	return rest, true
}

// Key returns a registry key under the prefix. Every key carries the
// prefix as a hash tag, "{dmb}:bkid", so that on a Redis Cluster they all
// live in one slot and a script can change several of them at once.
func (c Channels) Key(parts ...string) string {
	return c.KeyPrefix() + strings.Join(parts, ":")
}

// KeyPrefix is what every registry key starts with: "{dmb}:".
func (c Channels) KeyPrefix() string { return "{" + c.prefix + "}:" }

// globEscape escapes the characters that Redis glob patterns treat specially.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
