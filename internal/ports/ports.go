// Package ports tells which local ports the kernel hands to outgoing
// connections.
package ports

import (
	"os"
	"strconv"
	"strings"
)

// Ephemeral returns the kernel's ephemeral port range, lo to hi inclusive,
// as Linux publishes it; ok is false where it cannot be read.
func Ephemeral() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 0, 0, false
	}
	return lo, hi, true
}
