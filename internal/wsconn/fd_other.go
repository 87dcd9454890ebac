//go:build !unix

package wsconn

import (
	"errors"
	"net"
	"syscall"
)

// rawSockets is false where sockets are not plain descriptors (Windows):
// every read and write then goes through the net package.
const rawSockets = false

func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

func isWouldBlock(error) bool { return false }

func sendNow(int, []byte) int { return 0 }

func rawConn(net.Conn) syscall.RawConn { return nil }
