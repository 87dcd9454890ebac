//go:build unix && (!linux || 386)

package broker

import "syscall"

// sendNow writes p to the non-blocking socket fd. Other systems than Linux
// (and Linux on 386, which has no send and recv system calls of their
// own) take syscall.Write: on some of them (OpenBSD) a raw system call is
// not allowed, and on others it has no number in the syscall package.
func sendNow(fd int, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(fd, p)
	if err != nil {
		errno, ok := err.(syscall.Errno)
		if !ok {
			errno = syscall.EIO
		}
		return 0, errno
	}
	return n, 0
}

// readFD reads from the socket fd once.
func readFD(fd uintptr, p []byte) (int, error) { return syscall.Read(int(fd), p) }
