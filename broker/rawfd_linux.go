//go:build !386

package broker

import (
	"syscall"
	"unsafe"
)

// sendNow writes p to the non-blocking socket fd with one raw system call.
//
// Raw: the call never blocks, so the scheduler need not be told
// (entersyscall) and hand the processor on, as it does for calls that may;
// at 100,000 writes a second that hand-over, its thread wake-ups and the
// monitor thread polling the system calls in progress cost a tenth of the
// CPU.
//
// send(2), not write(2): it goes to the socket without the file layer's
// checks and change notification, which cost about 6% of the CPU of a
// fan-out to 10,000 clients at 5 broadcasts/s; MSG_NOSIGNAL reports a
// closed peer as EPIPE without raising SIGPIPE.
//
// Unlike syscall.Write and syscall.Read, these raw calls tell the race
// detector nothing: under -race, a socket write and the read of its bytes
// do not order the memory accesses around them.
func sendNow(fd int, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// readFD reads from the non-blocking socket fd once: recv(2) as a raw
// system call, for the reasons sendNow gives.
func readFD(fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
