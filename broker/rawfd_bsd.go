//go:build unix && !linux

package broker

import (
	"syscall"
	"unsafe"
)

// sendNow writes p to the non-blocking socket fd with one raw system call
// (see the Linux version for why raw).
func sendNow(fd int, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// readFD reads from the socket fd once.
func readFD(fd uintptr, p []byte) (int, error) { return syscall.Read(int(fd), p) }
