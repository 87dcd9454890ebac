package ports

import (
	"net"
	"runtime"
	"testing"
)

func TestAnOutgoingConnectionGetsAPortInTheEphemeralRange(t *testing.T) {
	lo, hi, ok := Ephemeral()
	if !ok {
		if runtime.GOOS == "linux" {
			t.Fatal("the ephemeral range could not be read on Linux")
		}
		t.Skip("no /proc here")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.LocalAddr().(*net.TCPAddr).Port; p < lo || p > hi {
		t.Errorf("outgoing port %d outside %d-%d", p, lo, hi)
	}
}
