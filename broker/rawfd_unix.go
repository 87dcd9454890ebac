//go:build unix

package broker

import "syscall"

// rawSockets tells whether a socket's descriptor can be read and written
// with plain system calls, for the small reads (corkConn.fill) and the
// writes that must not wait (corkConn.writeNow).
const rawSockets = true

// readFD reads from the socket fd once.
func readFD(fd uintptr, p []byte) (int, error) { return syscall.Read(int(fd), p) }
