package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

// The generator talks to the local machine only. Every address it is given
// is checked when the flags are read, and every socket it opens is checked
// again as it connects (loopbackOnly), which also covers whatever
// "localhost" resolves to.

// checkLoopbackHost accepts "localhost", an address of 127.0.0.0/8 and ::1.
func checkLoopbackHost(host string) error {
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%q is not an IP address or localhost", host)
	}
	if ip.Zone() != "" || !ip.Unmap().IsLoopback() {
		return fmt.Errorf("%s is not a loopback address (127.0.0.0/8, ::1 or localhost)", host)
	}
	return nil
}

// checkURL checks a URL of one of the schemes and returns it parsed.
func checkURL(flagName, s string, schemes ...string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("-%s: %w", flagName, err)
	}
	ok := false
	for _, sc := range schemes {
		ok = ok || u.Scheme == sc
	}
	if !ok {
		return nil, fmt.Errorf("-%s %q: scheme must be %s", flagName, s, strings.Join(schemes, " or "))
	}
	if u.User != nil {
		return nil, fmt.Errorf("-%s: user information is not supported", flagName)
	}
	if err := checkLoopbackHost(u.Hostname()); err != nil {
		return nil, fmt.Errorf("-%s: %w", flagName, err)
	}
	return u, nil
}

// checkHostPort checks a host:port address.
func checkHostPort(flagName, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("-%s %q: %w", flagName, s, err)
	}
	if port == "" {
		return fmt.Errorf("-%s %q: missing port", flagName, s)
	}
	if err := checkLoopbackHost(host); err != nil {
		return fmt.Errorf("-%s: %w", flagName, err)
	}
	return nil
}

// loopbackOnly is a net.Dialer Control that refuses to connect anywhere
// but to a loopback address.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("refusing to connect to %s: %w", address, err)
	}
	if !ap.Addr().Unmap().IsLoopback() {
		return fmt.Errorf("refusing to connect to %s: not a loopback address", address)
	}
	return nil
}

// loopbackFrom is loopbackOnly for a socket bound to a source address
// before it connects: the port is left to connect (bindNoPort).
func loopbackFrom(network, address string, c syscall.RawConn) error {
	if err := loopbackOnly(network, address, c); err != nil {
		return err
	}
	if err := bindNoPort(c); err != nil {
		return fmt.Errorf("source port left to connect: %w", err)
	}
	return nil
}

// dialer returns a loopback-only dialer that connects from src (any source
// when src is not valid).
func dialer(src netip.Addr) *net.Dialer {
	d := &net.Dialer{Timeout: handshakeTimeout, Control: loopbackOnly, KeepAlive: -1}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		d.Control = loopbackFrom
	}
	return d
}

// metricsClient returns the client that scrapes DMB's /metrics: its
// connections go to loopback addresses only, and none is kept between
// scrapes. It never uses a proxy.
func metricsClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           dialer(netip.Addr{}).DialContext,
			DisableKeepAlives:     true,
			DisableCompression:    true,
			TLSHandshakeTimeout:   handshakeTimeout,
			ResponseHeaderTimeout: handshakeTimeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// redisDialer is a go-redis Dialer for loopback addresses only.
func redisDialer(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialer(netip.Addr{}).DialContext(ctx, network, addr)
}

// Spreading the clients over many source addresses lifts the limit of one
// source address to one destination: one connection per ephemeral port.
// Every address of 127.0.0.0/8 is local on Linux.

// maxSources bounds -sources: 1000 addresses hold millions of connections.
const maxSources = 1000

// sourceAddrs returns n source addresses 127.0.0.1, 127.0.0.2, ...,
// 127.0.1.1, ... (skipping .0 and .255). For an IPv6 target there is one
// loopback address, and the kernel picks it.
func sourceAddrs(n int, ipv6 bool) []netip.Addr {
	if ipv6 {
		return []netip.Addr{{}}
	}
	out := make([]netip.Addr, 0, n)
	for k := 1; len(out) < n; k++ {
		if lo := byte(k); lo == 0 || lo == 255 {
			continue
		}
		out = append(out, netip.AddrFrom4([4]byte{127, 0, byte(k >> 8), byte(k)}))
	}
	return out
}

// perSourceLimit is how many clients one source address takes: 50,000, or
// three quarters of the ephemeral port range when that is smaller (ports in
// TIME_WAIT from an earlier run and DMB's own outgoing connections need
// some of it).
func perSourceLimit() int {
	return min(50000, ephemeralPorts()*3/4)
}

// defaultSources is enough source addresses for n clients.
func defaultSources(n int) int {
	per := perSourceLimit()
	return max(1, (n+per-1)/per)
}

// isIPv6Host reports whether a checked host is an IPv6 address.
func isIPv6Host(host string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Is6() && !ip.Is4In6()
}
