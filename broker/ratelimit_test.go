package broker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/protocol"
)

func TestAClientOverItsRateIsAnsweredRateLimitedThenClosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := &countingUplink{}
	brk := runBroker(t, New(liveRegistry{}, up, testConfig(func(c *Config) {
		c.SendQueue = 64
		c.ClientErrorLimit = 3
		c.ClientRate = 0.001
		c.ClientBurst = 5 // no token comes back within the test
	})))
	c := dialBroker(t, ctx, brk)
	send := func(id int) {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"event":"dmb:message","data":%d,"id":%d}`, id, id)); err != nil {
			t.Fatal(err)
		}
	}
	for id := range 5 {
		send(id)
	}
	// The burst passed on; the next frames are answered, not passed on.
	for id := 5; id < 8; id++ {
		send(id)
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := string(protocol.AppendError(nil, fmt.Appendf(nil, "%d", id), protocol.ErrTextRateLimited)); string(data) != want {
			t.Fatalf("answer to frame %d = %s, want %s", id, data, want)
		}
	}
	if n := up.messages.Load(); n != 5 {
		t.Fatalf("%d frames passed on, want the burst of 5", n)
	}
	// One more than DMB_CLIENT_ERROR_LIMIT over the rate: 1008.
	send(8)
	_, data, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(data), protocol.ErrTextRateLimited) {
		t.Fatalf("read %s, %v; want the last rate-limited answer", data, err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != protocol.ClosePolicy {
		t.Fatalf("read after going on over the rate: %v, want close 1008", err)
	}
}
