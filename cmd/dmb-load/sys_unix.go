//go:build unix

package main

import (
	"syscall"
	"time"

	"github.com/dmb-broker/dmb/internal/ports"
)

// ephemeralPorts is the size of the kernel's ephemeral port range, the
// number of connections one source address can open to one destination.
func ephemeralPorts() int {
	lo, hi, ok := ports.Ephemeral()
	if !ok {
		return 28232 // Linux's default range, 32768-60999
	}
	return hi - lo + 1
}

// fileLimit is the process's limit on open files (the Go runtime has
// already raised the soft limit to the hard one), 0 when unknown.
func fileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return uint64(l.Cur) // int64 on FreeBSD
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}
