package node_test

import (
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/dmb-broker/dmb/config"
)

// A client connection, WebSocket or TCP, has the kernel send buffer of
// DMB_CLIENT_SEND_BUFFER (Linux doubles what it is given), so that what a
// client that never reads holds in the kernel is bounded; left to itself,
// Linux grows it to 4 MB.
func TestClientConnectionsHaveTheSendBufferOfTheSetting(t *testing.T) {
	const size = 96 << 10
	e := newEnv(t)
	n := e.startNode(withTCP(t), func(c *config.Config) { c.ClientSendBuffer = size })
	for _, addr := range []string{n.Addr().String(), n.TCPAddr().String()} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		local := c.LocalAddr().(*net.TCPAddr)
		var got int
		eventually(t, "the node's side of the connection to "+addr, func() bool {
			got = peerSendBuffer(t, local)
			return got != 0
		})
		if got != 2*size {
			t.Errorf("the node's socket of a client of %s: send buffer %d bytes, want %d", addr, got, 2*size)
		}
	}
}

// peerSendBuffer is the send buffer of this process's socket whose peer
// is addr, 0 when there is none.
func peerSendBuffer(t *testing.T, addr *net.TCPAddr) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := syscall.Getpeername(fd)
		if err != nil {
			continue
		}
		in4, ok := sa.(*syscall.SockaddrInet4)
		if !ok || in4.Port != addr.Port || !net.IP(in4.Addr[:]).Equal(addr.IP) {
			continue
		}
		n, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		if err != nil {
			t.Fatalf("SO_SNDBUF: %v", err)
		}
		return n
	}
	return 0
}
