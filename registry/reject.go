package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dmb-broker/dmb/protocol"
)

// Reasons a registration payload is rejected, the values of the "reason"
// label of dmb_register_rejected_total.
const (
	RejectMalformed      = "malformed"       // not JSON, not an object, not UTF-8
	RejectUnknownType    = "unknown_type"    // type missing, not a string, or neither bk_connect nor bk_disconnect
	RejectInvalidNonce   = "invalid_nonce"   // bk_connect without a usable nonce: it cannot be answered
	RejectInvalidService = "invalid_service" // answered with bk_connect_nack
	RejectInvalidBKID    = "invalid_bkid"    // bk_disconnect without a usable bkid
	RejectNonceReused    = "nonce_reused"    // a nonce used again within its claim
)

// RejectReasons are every value of RejectReason, for metrics that start at
// zero.
var RejectReasons = []string{RejectMalformed, RejectUnknownType, RejectInvalidNonce, RejectInvalidService, RejectInvalidBKID, RejectNonceReused}

// rejectReason classifies what protocol.DecodeRegister refused.
func rejectReason(err error) string {
	var pe *protocol.PayloadError
	if !errors.As(err, &pe) {
		return RejectMalformed
	}
	switch r := pe.Reason; {
	case r == "invalid nonce":
		return RejectInvalidNonce
	case r == "invalid service name":
		return RejectInvalidService
	case r == "invalid bkid":
		return RejectInvalidBKID
	case r == "missing type", r == "type must be a string", strings.HasPrefix(r, "unknown type"):
		return RejectUnknownType
	}
	return RejectMalformed
}

// reusedNonceError is what a backend that used a nonce again is told.
const reusedNonceError = "nonce already used: send each bk_connect with a new nonce"

// rawField returns member name of a payload as the backend wrote it, cut
// short, for the log: DecodeRegister keeps only valid values.
func rawField(payload, name string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal([]byte(payload), &m) != nil {
		return ""
	}
	raw, ok := m[name]
	if !ok {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		s = string(raw)
	}
	return truncate(s)
}

// rejected logs, rate-limited, and counts a registration payload refused
// for reason; detail is what was wrong, in the backend's terms.
func (r *Registry) rejected(ctx context.Context, reason, detail, payload string, nonce string) {
	r.m.RegisterRejected.WithLabelValues(reason).Inc()
	suppressed, ok := r.rejectLog.allow(time.Now())
	if !ok {
		return
	}
	attrs := []any{"reason", reason, "error", detail, "nonce", truncate(nonce)}
	if svc := rawField(payload, "service"); svc != "" {
		attrs = append(attrs, "service", svc)
	}
	if reason == RejectMalformed || reason == RejectUnknownType || reason == RejectInvalidNonce {
		attrs = append(attrs, "payload", truncate(payload))
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	r.log.WarnContext(ctx, "registration refused: "+hintFor(reason), attrs...)
}

// hintFor tells a backend's author what to do about a rejection.
func hintFor(reason string) string {
	switch reason {
	case RejectMalformed:
		return "publish one JSON object per message on the register channel"
	case RejectUnknownType:
		return `"type" must be "bk_connect" or "bk_disconnect"`
	case RejectInvalidNonce:
		return "the nonce must be 1-128 characters of A-Z a-z 0-9 _ . : - (no answer can be sent without one)"
	case RejectInvalidService:
		return "the service name must be 1-64 characters of a-z 0-9 _ . - (answered with bk_connect_nack)"
	case RejectInvalidBKID:
		return "bk_disconnect needs the bkid DMB gave in bk_connect_ack"
	case RejectNonceReused:
		return "use a new nonce for each bk_connect (answered with bk_connect_nack)"
	}
	return reason
}

// limiter lets a burst of log lines through, then one per interval, and
// counts what it held back, so that a misbehaving backend cannot flood the
// log.
type limiter struct {
	burst    int
	interval time.Duration

	mu         sync.Mutex
	tokens     int
	last       time.Time
	suppressed int
}

func newLimiter(burst int, interval time.Duration) *limiter {
	return &limiter{burst: burst, interval: interval, tokens: burst}
}

// allow reports whether a line may be logged at now, and how many were
// held back since the last one that was.
func (l *limiter) allow(now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.last = now
	}
	if refill := int(now.Sub(l.last) / l.interval); refill > 0 {
		l.tokens = min(l.burst, l.tokens+refill)
		l.last = l.last.Add(time.Duration(refill) * l.interval)
	}
	if l.tokens == 0 {
		l.suppressed++
		return 0, false
	}
	l.tokens--
	suppressed, l.suppressed = l.suppressed, 0
	return suppressed, true
}

// claimValue is what a nonce key holds: the bkid assigned (or "-" for a
// nack) and the node that claimed the nonce, so that the node sees a nonce
// that comes back to it.
func claimValue(bkid, node string) string { return fmt.Sprintf("%s@%s", bkid, node) }

// parseClaim splits a nonce key's value.
func parseClaim(v string) (bkid, node string) {
	bkid, node, _ = strings.Cut(v, "@")
	return bkid, node
}
