//go:build unix && (!linux || 386)

package wsconn

import "syscall"

// sendNow writes p to the non-blocking socket fd and returns how many
// bytes it took: 0 when it would wait or failed. Other systems than Linux
// (and Linux on 386, which has no send system call of its own) take
// syscall.Write: on some of them (OpenBSD) a raw system call is not
// allowed.
func sendNow(fd int, p []byte) int {
	for {
		n, err := syscall.Write(fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n < 0 {
			return 0
		}
		return n
	}
}
