package wsconn

import (
	"net/http"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/internal/looptest"
)

// Requests that connections opened together never finish are cut over a
// quarter of the header timeout, not all in one instant: 500 cut at once,
// and reopened at once, took a node's core for tens of milliseconds while
// its clients' frames waited.
func TestUnfinishedRequestsOpenedTogetherAreCutApart(t *testing.T) {
	const timeout = time.Second
	ln := Listen(looptest.Listen(t))
	srv := &http.Server{
		ConnContext:       ConnContext,
		Handler:           http.NotFoundHandler(),
		ReadHeaderTimeout: timeout,
		ReadTimeout:       timeout,
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-served })
	looptest.CutApart(t, ln.Addr().String(), 50, "GET / HTTP/1.1\r\nHost: x\r\n", timeout)
}
