package netyield

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/internal/looptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// yieldsUntilRead counts the yields of a busy loop on one processor until
// a goroutine blocked reading a loopback connection has read what was
// written to it before the loop began; it gives up after limit yields.
func yieldsUntilRead(t *testing.T, yield func(), limit int) int {
	t.Helper()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	server, client := looptest.Pair(t, looptest.Listen(t))

	var read atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1)
		if _, err := server.Read(buf); err == nil {
			read.Store(true)
		}
	})
	runtime.Gosched() // the reader blocks in the network poller
	if _, err := client.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for ; n < limit && !read.Load(); n++ {
		yield()
	}
	client.Close() // the reader returns if it has not read yet
	wg.Wait()
	return n
}

// On a processor that never runs out of goroutines to run, a goroutine
// woken by the network runs after a yield or two, where
// runtime.Gosched leaves it waiting for the runtime's monitor.
func TestYieldRunsWhatTheNetworkWoke(t *testing.T) {
	y, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	for range 20 {
		if n := yieldsUntilRead(t, y.Yield, 1000); n > 3 {
			t.Fatalf("the reader ran after %d yields", n)
		}
	}
}

// Many goroutines yield at once, and each goes on.
func TestConcurrentYields(t *testing.T) {
	y, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 1000 {
				y.Yield()
			}
		})
	}
	wg.Wait()
}

// After Close, and on a nil Yielder, Yield falls back to runtime.Gosched;
// Close stops the goroutine (goleak checks) and may be called again.
func TestCloseAndNil(t *testing.T) {
	y, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	y.Yield()
	if err := y.Close(); err != nil {
		t.Fatal(err)
	}
	y.Yield()
	if err := y.Close(); err != nil {
		t.Fatal(err)
	}
	var none *Yielder
	none.Yield()
	if err := none.Close(); err != nil {
		t.Fatal(err)
	}
}
