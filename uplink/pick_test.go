package uplink

import (
	"math/rand/v2"
	"testing"
)

// pickClient is a Client that only has a cid.
type pickClient struct{ cid string }

func (c pickClient) CID() string     { return c.cid }
func (pickClient) Service() string   { return "s" }
func (pickClient) Remote() string    { return "" }
func (pickClient) User() string      { return "" }
func (pickClient) Send(frame []byte) {}

// published runs pick until queued is empty, and returns in which pipeline
// each request went, by its index in queued. Each request carries that
// index in its code, which pick does not read.
func published(t *testing.T, queued []request) []int {
	t.Helper()
	w := &worker{held: make(map[string]struct{})}
	for i := range queued {
		queued[i].code = i
	}
	at := make([]int, len(queued))
	batch := make([]request, 0, maxBatch)
	for n := 0; len(queued) > 0; n++ {
		before := len(queued)
		batch, queued = w.pick(batch[:0], queued)
		if len(batch) == 0 || len(batch)+len(queued) != before {
			t.Fatalf("pipeline %d took %d of %d and left %d", n, len(batch), before, len(queued))
		}
		lifecycles := 0
		for _, r := range batch {
			at[r.code] = n
			if r.lifecycle() {
				lifecycles++
			}
		}
		if len(batch) > maxBatch || lifecycles > lifecycleTurn {
			t.Fatalf("pipeline %d has %d requests, %d of them connects or disconnects", n, len(batch), lifecycles)
		}
	}
	return at
}

// Whatever the queue holds, no request passes an earlier one of its own
// client, nothing passes a request of every client nor does one pass
// anything, and each pipeline keeps its bounds.
func TestPickKeepsEachClientsOrder(t *testing.T) {
	kinds := []reqKind{reqConnect, reqMessage, reqMessage, reqMessage, reqDisconnect, reqDrop, reqEvent, reqBarrier, reqRetrack}
	for round := range 200 {
		rng := rand.New(rand.NewPCG(uint64(round), 1))
		n := 1 + rng.IntN(3*maxBatch)
		queued := make([]request, n)
		for i := range queued {
			r := request{kind: kinds[rng.IntN(len(kinds))]}
			cid := string(rune('a' + rng.IntN(40)))
			switch {
			case r.kind == reqRetrack:
			case r.kind == reqBarrier && rng.IntN(2) == 0:
				r.cid = cid // Settle's
			default:
				r.client = pickClient{cid}
			}
			queued[i] = r
		}
		in := append([]request(nil), queued...)
		at := published(t, queued)
		fail := func(i int, what string) {
			t.Helper()
			t.Fatalf("round %d: request %d (cid %q, kind %d) %s", round, i, in[i].key(), in[i].kind, what)
		}
		last := make(map[string]int) // by cid: the pipeline of its last request so far
		maxAt := make([]int, n)      // the latest pipeline of the requests before i
		for i := range in {
			if i > 0 {
				maxAt[i] = max(maxAt[i-1], at[i-1])
			}
			if k := in[i].key(); k != "" && at[i] < last[k] {
				fail(i, "passed one of its client's")
			} else if k != "" {
				last[k] = at[i]
			}
		}
		minAfter := len(in) * maxBatch
		for i := len(in) - 1; i >= 0; i-- {
			if in[i].key() == "" && (maxAt[i] > at[i] || minAfter < at[i]) {
				fail(i, "of every client passed, or was passed")
			}
			minAfter = min(minAfter, at[i])
		}
	}
}

// A message passes the connects of other clients ahead of it: it goes in
// the first pipeline, with a pipeline's share of them.
func TestPickLetsAMessagePassConnects(t *testing.T) {
	queued := make([]request, 0, 1002)
	for i := range 1000 {
		queued = append(queued, request{kind: reqConnect, client: pickClient{"c" + string(rune(i))}})
	}
	queued = append(queued, request{kind: reqMessage, client: pickClient{"honest"}})
	at := published(t, queued)
	if at[1000] != 0 {
		t.Errorf("the message went in pipeline %d, after %d connects", at[1000], at[1000]*lifecycleTurn)
	}
	if last := at[999]; last != 1000/lifecycleTurn {
		t.Errorf("the connects took %d pipelines, want %d", last+1, 1000/lifecycleTurn+1)
	}
}
