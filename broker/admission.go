package broker

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/registry"
)

// Admission decides who may connect, whatever the transport: the
// transport's handler checks what is its own (a WebSocket's origin), then
// asks admit, and closes a refused client through refuse.

// admit decides whether a client of service with token, from remote, may
// connect: the user the token names (empty when auth is off), or the close
// code and reason that refuse it.
func (b *Broker) admit(service, token, remote string) (id identity, code int, reason string) {
	if b.limitsAddr(remote) && !b.addrs.allowHandshake(addrKey(remote), time.Now()) {
		return id, protocol.CloseTryAgainLater, "too many connections from this address"
	}
	if !protocol.ValidService(service) {
		return id, protocol.CloseUnknownSvc, "unknown service"
	}
	if b.cfg.Auth != nil {
		// Before any look-up: who may not connect learns nothing of the
		// services.
		c, err := b.cfg.Auth.VerifyClaims(token, service)
		if err != nil {
			return id, protocol.CloseUnauthorized, authReason(err)
		}
		id = identity{user: c.Subject, rooms: c.Rooms}
	}
	code, reason = b.admitService(service)
	return id, code, reason
}

// identity is who a token says a client is: its user, and the patterns of
// the rooms it may join by itself. Without auth it is empty.
type identity struct {
	user  string
	rooms []string
}

// admitService asks the registry whether service has a live backend.
func (b *Broker) admitService(service string) (int, string) {
	status, err := b.reg.Lookup(b.ctx, service) // bounded by the registry
	switch {
	case err != nil:
		// Redis did not answer: the backends may well be live, and the
		// client learns that it is Redis, not them, it waits for.
		b.log.Warn("registry look-up failed", "service", service, "err", err)
		return protocol.CloseNoLiveBackend, "redis unavailable"
	case status == registry.Unknown:
		return protocol.CloseUnknownSvc, "unknown service"
	case status == registry.NoLive:
		return protocol.CloseNoLiveBackend, "no live backend"
	}
	return 0, ""
}

// refuse closes a client that was not admitted with code and reason. A
// flood of refusals writes one line per close code and interval, which
// says how many were not logged before it; the metrics count them all.
func (b *Broker) refuse(t Transport, service, remote string, code int, reason string) {
	b.m.Disconnected(code)
	b.m.Refusals.WithLabelValues(strconv.Itoa(code)).Inc()
	if log, unlogged := b.refusals.allow(code, time.Now()); log {
		b.log.Info("client refused", "service", service, "remote", remote, "code", code, "reason", reason, "unlogged_before", unlogged)
	}
	_ = t.Close(code, reason)
}

// refusalLog lets one refusal per close code and interval be logged.
type refusalLog struct {
	every time.Duration

	mu     sync.Mutex // guards byCode
	byCode map[int]*refusalWindow
}

type refusalWindow struct {
	start    time.Time // when the last logged refusal was
	unlogged int       // refusals since, not logged
}

// allow tells whether a refusal with code at now is logged, and how many
// were not logged since the last one that was.
func (l *refusalLog) allow(code int, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.byCode[code]
	if w == nil {
		if l.byCode == nil {
			l.byCode = make(map[int]*refusalWindow)
		}
		w = &refusalWindow{}
		l.byCode[code] = w // close codes are few: the map stays small
	} else if now.Sub(w.start) < l.every {
		w.unlogged++
		return false, 0
	}
	unlogged := w.unlogged
	w.start, w.unlogged = now, 0
	return true, unlogged
}

// authReason is the close reason for a refused token.
func authReason(err error) string {
	for _, e := range []error{auth.ErrMissing, auth.ErrExpired, auth.ErrNoSubject, auth.ErrWrongScope} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return auth.ErrInvalid.Error()
}

// newCID returns a client id: 128 random bits, so ids are unique across
// nodes and restarts without any coordination.
func newCID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// originAllowed applies the origin policy: a request without Origin (not a
// browser) is allowed, and so is one from the same host or matching a
// pattern of DMB_ALLOWED_ORIGINS (a host, or a path.Match pattern such as
// *.example.com, optionally with a port).
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	host := strings.ToLower(u.Host)
	for _, p := range patterns {
		p = strings.ToLower(strings.TrimSpace(p))
		if p == "" {
			continue
		}
		if ok, _ := path.Match(p, host); ok {
			return true
		}
		if ok, _ := path.Match(p, u.Hostname()); ok && !strings.Contains(p, ":") {
			return true
		}
	}
	return false
}

// remoteAddr is the client's address: the peer's, unless the peer is a
// trusted proxy, in which case X-Forwarded-For is read from the right, past
// every trusted proxy, to the first address that is not one (X-Real-IP when
// there is no X-Forwarded-For).
func remoteAddr(r *http.Request, trusted []netip.Prefix) string {
	peer := r.RemoteAddr
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	peerAddr, err := netip.ParseAddr(peer)
	if err != nil || !isTrusted(peerAddr.Unmap(), trusted) {
		return peer
	}
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		hops := strings.Split(strings.Join(xff, ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			hop := strings.TrimSpace(hops[i])
			a, err := netip.ParseAddr(hop)
			if err != nil {
				return peer // a forged or broken header: believe only the peer
			}
			if !isTrusted(a.Unmap(), trusted) || i == 0 {
				return a.Unmap().String()
			}
		}
	}
	if real := strings.TrimSpace(r.Header.Get("X-Real-IP")); real != "" {
		if a, err := netip.ParseAddr(real); err == nil {
			return a.Unmap().String()
		}
	}
	return peer
}

// limitsAddr tells whether the per-address limits apply to remote: not to
// a trusted proxy's own address.
func (b *Broker) limitsAddr(remote string) bool {
	a, err := netip.ParseAddr(remote)
	return err != nil || !isTrusted(a.Unmap(), b.cfg.TrustedProxies)
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
