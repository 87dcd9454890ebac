// Package looptest gives tests the two ends of a loopback TCP connection.
package looptest

import (
	"net"
	"testing"
)

// Pair dials ln, a listener on loopback, and accepts the connection: the
// server's end comes through ln, wrapped as ln wraps it. Both ends are
// closed when the test ends.
func Pair(t testing.TB, ln net.Listener) (server, client net.Conn) {
	t.Helper()
	client, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Close() })
	return server, client
}

// Listen listens on a free loopback port; the listener is closed when the
// test ends.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
