package broker

import (
	"crypto/rand"
	"encoding/base64"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"time"
)

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

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// errorWindow counts a client's bad frames over the last minute. It is used
// by the client's reader only.
type errorWindow struct {
	times []time.Time
}

// add records a bad frame at now and reports whether the client has now
// sent more than limit in a minute.
func (w *errorWindow) add(now time.Time, limit int) bool {
	cut := 0
	for cut < len(w.times) && now.Sub(w.times[cut]) >= time.Minute {
		cut++
	}
	w.times = append(w.times[:0], w.times[cut:]...)
	w.times = append(w.times, now)
	return len(w.times) > limit
}
