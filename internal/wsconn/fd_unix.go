//go:build unix

package wsconn

import (
	"net"
	"syscall"
)

// rawSockets tells whether a socket's descriptor can be read and written
// with plain system calls, for the small reads (netConn.fill) and the
// writes that must not wait (netConn.writeNow).
const rawSockets = true

// readFD reads from the non-blocking socket fd once. A raw recv(2) here
// measured within the noise of this plain read (uplink at 2 frames in
// flight: 88k against 91k acked/s, ranges overlapping), so the plain read
// it is.
func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// isWouldBlock tells whether err means the socket has nothing to read yet.
func isWouldBlock(err error) bool { return err == syscall.EAGAIN }

// rawConn returns the descriptor access of conn, nil when it has none.
func rawConn(conn net.Conn) syscall.RawConn {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}
