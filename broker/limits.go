package broker

import (
	"net/netip"
	"sync"
	"time"

	"github.com/dmb-broker/dmb/internal/ratelimit"
)

// Connection limits, applied at admission: clients per node and per
// client address, and handshakes a second per client address. A client
// over one is closed with 1013 (try again later). The address is the
// client's as remoteAddr finds it; a trusted proxy's own address (a proxy
// that did not say for whom it connects) is not limited per address, since
// every client behind it would share its bucket. An IPv6 client counts
// by its /64, the least that a site is given: one host holds a whole /64
// and could take a fresh address for each connection.

// addrKey is the key that a client address counts under in the
// per-address limits: the address itself, or an IPv6 address's /64.
func addrKey(remote string) string {
	a, err := netip.ParseAddr(remote)
	if err != nil || a.Unmap().Is4() {
		return remote
	}
	p, err := a.Prefix(64)
	if err != nil {
		return remote
	}
	return p.String()
}

// addrLimits are the per-address limits of a broker.
type addrLimits struct {
	rate  float64 // handshakes a second per address; 0: no limit
	burst int

	mu      sync.Mutex // guards the maps
	buckets map[string]*addrBucket
	swept   time.Time
}

type addrBucket struct {
	ratelimit.Bucket
	used time.Time
}

// maxAddrBuckets bounds the addresses the handshake rate remembers: past
// it, the buckets not used for a minute are forgotten, and if that is not
// enough, all of them (a flood from many addresses then passes for a
// moment, limited by the other bounds).
const maxAddrBuckets = 1 << 16

// allowHandshake takes a handshake token of addr at now.
func (l *addrLimits) allowHandshake(addr string, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[addr]
	if b == nil {
		if len(l.buckets) >= maxAddrBuckets {
			l.sweepLocked(now)
		}
		if l.buckets == nil {
			l.buckets = make(map[string]*addrBucket)
		}
		b = &addrBucket{}
		l.buckets[addr] = b
	}
	b.used = now
	return b.Allow(now, l.rate, l.burst)
}

// sweepLocked forgets the buckets idle for a minute, or all of them. mu
// must be held.
func (l *addrLimits) sweepLocked(now time.Time) {
	for a, b := range l.buckets {
		if now.Sub(b.used) > time.Minute {
			delete(l.buckets, a)
		}
	}
	if len(l.buckets) >= maxAddrBuckets {
		clear(l.buckets)
	}
}
