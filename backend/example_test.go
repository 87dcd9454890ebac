package backend_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/backend"
)

// An echo service: every client message is answered with a reply that
// resolves the client's request, and told to everyone. Both are
// recoverable: they come with an offset, "bkid:position", by which a
// client that resumes its session gets what it missed.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	rdb := redis.NewClient(&redis.Options{Addr: redisAddr}) // the Redis that DMB uses
	defer rdb.Close()
	b := backend.New(rdb, "echo", backend.Options{})
	done := make(chan error, 1)
	go func() {
		done <- b.Run(ctx, b.Requests(func(ctx context.Context, ev backend.Event) (any, error) {
			_ = b.Broadcast(ctx, map[string]any{"from": "echo", "data": ev.Data})
			return map[string]any{"echo": ev.Data}, nil
		}, nil))
	}()
	<-b.Ready()

	// A client, as a browser connects: ws://<dmb>/ws/echo.
	c, _, err := websocket.Dial(ctx, "ws://"+dmbAddr+"/ws/echo", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.CloseNow()
	_ = c.Write(ctx, websocket.MessageText, []byte(`{"event":"dmb:message","data":"hi","id":1}`))
	for seen := 0; seen < 4; seen++ { // dmb:connected, the ack, the broadcast, the reply
		_, frame, err := c.Read(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		if !strings.HasPrefix(string(frame), `{"event":"dmb:connected"`) { // its cid varies
			fmt.Println(offset.ReplaceAllString(string(frame), `"offset":"…"`)) // so does an offset
		}
	}
	cancel()
	<-done
	// Unordered output:
	// {"event":"dmb:ack","id":1}
	// {"event":"dmb:broadcast","data":{"data":"hi","from":"echo"},"offset":"…"}
	// {"event":"dmb:direct","data":{"echo":"hi"},"reply_to":1,"offset":"…"}
}

var offset = regexp.MustCompile(`"offset":"[^"]*"`)

// A client token for alice, valid an hour, for the service chat only: what
// your login hands to the page, which connects with ?token=. DMB verifies it
// with the same secret (DMB_JWT_SECRET).
func ExampleMintToken() {
	const secret = "a secret of 32 bytes or more, shared with DMB"
	token, err := backend.MintToken(secret, "alice", time.Hour, "chat")
	if err != nil {
		fmt.Println(err)
		return
	}
	v, _ := auth.NewVerifier(secret)
	user, err := v.Verify(token, "chat")
	fmt.Println(user, err)
	_, err = v.Verify(token, "other")
	fmt.Println(err)
	// Output:
	// alice <nil>
	// token not valid for this service
}
