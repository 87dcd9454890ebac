package broker

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

func request(remote string, header http.Header) *http.Request {
	r, _ := http.NewRequest("GET", "http://dmb.example:8082/ws/chat", nil)
	r.RemoteAddr = remote
	if header != nil {
		r.Header = header
	}
	return r
}

func TestRemoteIsThePeerUnlessThePeerIsATrustedProxy(t *testing.T) {
	cases := []struct {
		peer   string
		header http.Header
		want   string
	}{
		{"203.0.113.5:4000", nil, "203.0.113.5"},
		{"203.0.113.5:4000", http.Header{"X-Forwarded-For": {"1.2.3.4"}}, "203.0.113.5"},
		{"127.0.0.1:4000", http.Header{"X-Forwarded-For": {"1.2.3.4"}}, "1.2.3.4"},
		{"127.0.0.1:4000", http.Header{"X-Forwarded-For": {"9.9.9.9, 1.2.3.4"}}, "1.2.3.4"},
		{"127.0.0.1:4000", http.Header{"X-Forwarded-For": {"9.9.9.9", "1.2.3.4, 127.0.0.2"}}, "1.2.3.4"},
		{"127.0.0.1:4000", http.Header{"X-Forwarded-For": {"127.0.0.3, 127.0.0.2"}}, "127.0.0.3"},
		{"127.0.0.1:4000", http.Header{"X-Forwarded-For": {"1.2.3.4, junk"}}, "127.0.0.1"},
		{"127.0.0.1:4000", http.Header{"X-Real-Ip": {"1.2.3.4"}}, "1.2.3.4"},
		{"127.0.0.1:4000", http.Header{"X-Real-Ip": {"junk"}}, "127.0.0.1"},
		{"[::1]:4000", http.Header{"X-Forwarded-For": {"2001:db8::1"}}, "2001:db8::1"},
		{"[::ffff:127.0.0.1]:4000", http.Header{"X-Forwarded-For": {"::ffff:1.2.3.4"}}, "1.2.3.4"},
	}
	for _, tc := range cases {
		if got := remoteAddr(request(tc.peer, tc.header), loopback); got != tc.want {
			t.Errorf("peer %s %v: remote %q, want %q", tc.peer, tc.header, got, tc.want)
		}
	}
}

func TestOriginIsAllowedWhenAbsentSameHostOrListed(t *testing.T) {
	patterns := []string{"app.example.com", "*.example.org", "localhost:3000"}
	cases := []struct {
		origin string
		want   bool
	}{
		{"", true},
		{"http://dmb.example:8082", true},
		{"https://DMB.example:8082", true},
		{"https://app.example.com", true},
		{"https://app.example.com:8443", true},
		{"https://a.example.org", true},
		{"http://localhost:3000", true},
		{"http://localhost:3001", false},
		{"https://example.org", false},
		{"https://evil.test", false},
		{"https://app.example.com.evil.test", false},
		{"null", false},
		{"::", false},
	}
	for _, tc := range cases {
		h := http.Header{}
		if tc.origin != "" {
			h.Set("Origin", tc.origin)
		}
		if got := originAllowed(request("127.0.0.1:1", h), patterns); got != tc.want {
			t.Errorf("origin %q: %v, want %v", tc.origin, got, tc.want)
		}
	}
}

func TestErrorWindowCountsTheLastMinuteOnly(t *testing.T) {
	var w errorWindow
	t0 := time.Now()
	for i := range 3 {
		if w.add(t0.Add(time.Duration(i)*time.Second), 3) {
			t.Fatalf("error %d over the limit", i+1)
		}
	}
	if !w.add(t0.Add(3*time.Second), 3) {
		t.Fatal("fourth error in a minute not over a limit of 3")
	}
	if w.add(t0.Add(62*time.Second), 3) {
		t.Fatal("errors older than a minute still counted")
	}
}

func FuzzRemoteAddr(f *testing.F) {
	for _, s := range []string{"1.2.3.4", "1.2.3.4, 127.0.0.1", "", ",,,", "2001:db8::1", "junk", "::ffff:1.2.3.4, 10.0.0.1"} {
		f.Add("127.0.0.1:1234", s, "5.6.7.8")
	}
	f.Add("203.0.113.1:1", "1.2.3.4", "")
	f.Fuzz(func(t *testing.T, peer, xff, real string) {
		r := request(peer, http.Header{"X-Forwarded-For": {xff}, "X-Real-Ip": {real}})
		got := remoteAddr(r, loopback)
		if got == "" && peer != "" && !strings.HasPrefix(peer, ":") {
			if _, err := netip.ParseAddrPort(peer); err == nil {
				t.Fatalf("empty remote for peer %q", peer)
			}
		}
		// An untrusted peer's headers are never believed.
		if ap, err := netip.ParseAddrPort(peer); err == nil && !isTrusted(ap.Addr().Unmap(), loopback) && got != ap.Addr().String() {
			t.Fatalf("untrusted peer %q: remote %q from headers", peer, got)
		}
	})
}

func FuzzOriginAllowed(f *testing.F) {
	for _, s := range []string{"", "null", "http://dmb.example:8082", "https://app.example.com", "http://[::1]:80", "%zz", "http://a@b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, origin string) {
		h := http.Header{}
		h.Set("Origin", origin)
		allowed := originAllowed(request("127.0.0.1:1", h), nil)
		// With no patterns, only the same host (or no Origin) passes.
		if allowed && origin != "" && !strings.Contains(strings.ToLower(origin), "dmb.example:8082") {
			t.Fatalf("origin %q allowed with no patterns", origin)
		}
	})
}

func TestRefusalsAreLoggedOncePerCodeAndInterval(t *testing.T) {
	l := refusalLog{every: 10 * time.Second}
	now := time.Unix(1000, 0)
	if ok, _ := l.allow(4004, now); !ok {
		t.Fatal("the first refusal was not logged")
	}
	for i := range 1000 {
		if ok, _ := l.allow(4004, now.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatalf("refusal %d within the interval was logged", i)
		}
	}
	if ok, _ := l.allow(4001, now); !ok {
		t.Fatal("the first refusal of another code was not logged")
	}
	ok, unlogged := l.allow(4004, now.Add(10*time.Second))
	if !ok || unlogged != 1000 {
		t.Fatalf("after the interval: logged %v with %d unlogged, want true with 1000", ok, unlogged)
	}
}
