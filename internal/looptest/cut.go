package looptest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// CutApart opens n connections to addr together, each of which sends first
// and then nothing, and checks that the server cuts each after between
// timeout and a quarter more, and not all in the same instant: over at
// least a tenth of the timeout. Cut together, a thousand such connections
// end, and come back, in one burst of the server's work.
func CutApart(t *testing.T, addr string, n int, first string, timeout time.Duration) {
	t.Helper()
	held := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			start := time.Now()
			if _, err := io.WriteString(c, first); err != nil {
				errs[i] = err
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * timeout))
			_, errs[i] = io.Copy(io.Discard, c) // until the server cuts it
			held[i] = time.Since(start)
		})
	}
	wg.Wait()
	soonest, latest := held[0], held[0]
	for i, d := range held {
		if errs[i] != nil {
			t.Fatalf("connection %d: %v", i, errs[i])
		}
		if d < timeout-50*time.Millisecond || d > timeout+timeout/4+500*time.Millisecond {
			t.Errorf("connection %d cut after %s, want between %s and a quarter more", i, d, timeout)
		}
		soonest, latest = min(soonest, d), max(latest, d)
	}
	if latest-soonest < timeout/10 {
		t.Errorf("%d connections opened together were cut within %s of one another", n, latest-soonest)
	}
}
