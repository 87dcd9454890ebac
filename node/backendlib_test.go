package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/backend"
)

// The Go backend library's request helper answers each client message with
// a direct whose reply_to is the message's id.
func TestBackendRequestsReplyWithReplyTo(t *testing.T) {
	e := newEnv(t)
	n := e.startNode()
	rdb := e.client()
	t.Cleanup(func() { _ = rdb.Close() })
	b := backend.New(rdb, "calc", backend.Options{Logger: testLogger()})
	handler := b.Requests(func(_ context.Context, ev backend.Event) (any, error) {
		var nums []int
		if err := json.Unmarshal(ev.Data, &nums); err != nil {
			return nil, errors.New("want a list of numbers")
		}
		sum := 0
		for _, v := range nums {
			sum += v
		}
		return map[string]int{"sum": sum}, nil
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, handler) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-b.Ready():
	case <-time.After(wait):
		t.Fatal("backend not ready")
	}
	c := connect(t, n, "calc").welcome()
	c.send(`{"event":"dmb:message","data":[1,2,3],"id":"r1"}`)
	c.send(`{"event":"dmb:message","data":"x","id":2}`)
	reply := c.nextEvent("dmb:direct")
	if string(reply.ReplyTo) != `"r1"` || string(reply.Data) != `{"sum":6}` {
		t.Fatalf("reply %+v", reply)
	}
	reply = c.nextEvent("dmb:direct")
	if string(reply.ReplyTo) != "2" || string(reply.Data) != `{"error":"want a list of numbers"}` {
		t.Fatalf("error reply %+v", reply)
	}
}
