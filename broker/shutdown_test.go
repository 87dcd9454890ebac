package broker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/uplink"
)

// stuckUplink is an uplink whose queue is full: Message waits until its
// context ends.
type stuckUplink struct {
	nullUplink
	waiting chan struct{}
}

func (u stuckUplink) Message(ctx context.Context, _ uplink.Client, _, _ json.RawMessage, _ bool) error {
	u.waiting <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

func TestShutdownReturnsByItsDeadlineWhileAReaderWaitsForTheUplink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	up := stuckUplink{waiting: make(chan struct{}, 1)}
	brk := newTestBrokerWith(t, up)
	c := dialBroker(t, ctx, brk)
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":1,"id":1}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-up.waiting: // the reader is in the uplink's enqueue
	case <-ctx.Done():
		t.Fatal("the frame never reached the uplink")
	}

	const deadline = 300 * time.Millisecond
	sctx, scancel := context.WithTimeout(ctx, deadline)
	defer scancel()
	start := time.Now()
	returned := make(chan error, 1)
	go func() { returned <- brk.Shutdown(sctx) }()
	select {
	case err := <-returned:
		if err == nil || !strings.Contains(err.Error(), "clients dropped") {
			t.Fatalf("Shutdown = %v, want the clients dropped at its deadline", err)
		}
		// Its own deadline, and the time to drop the connection.
		if took := time.Since(start); took > deadline+2*time.Second {
			t.Fatalf("Shutdown returned %v after a deadline of %v", took, deadline)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown did not return while a reader waited for the uplink")
	}
	if n := brk.Clients(); n != 0 {
		t.Fatalf("%d clients left after Shutdown", n)
	}
}

// A broker whose loops do not run (or no longer run) still serves its
// sessions: each writes on a goroutine of its own.
func TestSessionsWriteWithoutTheBrokersLoops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{"never run", "run and stopped"} {
		t.Run(name, func(t *testing.T) {
			brk := New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) {
				c.SendQueue = 64
			}))
			if name == "run and stopped" {
				rctx, stop := context.WithCancel(ctx)
				stop()
				if err := brk.Run(rctx); err != nil {
					t.Fatal(err)
				}
			}
			c := dialBroker(t, ctx, brk)
			for i := range 3 {
				brk.Broadcast("chat", []byte{'0' + byte(i)}, nil)
				// Paced past fanoutIdle as well as back to back.
				if i == 0 {
					brk.Broadcast("chat", []byte("q"), nil)
				}
			}
			for _, want := range []string{"0", "q", "1", "2"} {
				_, data, err := c.Read(ctx)
				if err != nil || string(data) != want {
					t.Fatalf("read %q, %v; want %q", data, err, want)
				}
			}
		})
	}
}
