package protocol

// WebSocket close codes that DMB sends (docs/protocol.md, section 3).
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	CloseUnsupported   = 1003
	CloseAbnormal      = 1006 // never sent: the connection dropped without a close frame
	ClosePolicy        = 1008
	CloseTooBig        = 1009
	CloseInternal      = 1011
	CloseTryAgainLater = 1013 // the node is full, or the address connects too often
	CloseUnauthorized  = 4001
	CloseUnknownSvc    = 4004
	CloseSlowConsumer  = 4008
	CloseKicked        = 4009
	CloseResumed       = 4010 // the session was resumed on another connection
	CloseNoLiveBackend = 4503
)

// MaxCloseReason is the longest close reason a WebSocket close frame holds.
const MaxCloseReason = 123

// TruncateReason cuts reason to fit a close frame without splitting a UTF-8
// sequence.
func TruncateReason(reason string) string { return truncateUTF8(reason, MaxCloseReason) }

// truncateUTF8 cuts s to at most max bytes without splitting a UTF-8
// sequence.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut]
}
