package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// dialFirst dials url and returns the first frame and the connection.
func dialFirst(ctx context.Context, u string) (*websocket.Conn, frame, error) {
	c, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		return nil, frame{}, err
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		_ = c.CloseNow()
		return nil, frame{}, err
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		_ = c.CloseNow()
		return nil, frame{}, fmt.Errorf("first frame %q: %w", data, err)
	}
	return c, f, nil
}

// A thousand clients resume at once, half of them with tokens that cannot
// resume anything: each gets its defined answer, and a client that is
// not part of it goes on being served.
func TestAResumeStormGivesEachItsAnswer(t *testing.T) {
	const clients = 1000
	e := newEnv(t)
	n := e.startNode(bigQueues)
	e.startBackend("chat")
	ctx := e.ctx()

	type session struct{ cid, token string }
	sessions := make([]session, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range sessions {
		wg.Go(func() {
			c, f, err := dialFirst(ctx, n.wsURL("chat"))
			if err != nil {
				errs <- err
				return
			}
			sessions[i] = session{f.CID, f.Session}
			_ = c.CloseNow() // dropped: resumable
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	honest := connect(t, n, "chat").welcome()

	answers := make([]frame, clients)
	errs = make(chan error, clients)
	for i := range sessions {
		token := sessions[i].token
		if i%2 == 1 { // forged: the signature of another
			token = token[:strings.LastIndexByte(token, '.')+1] + sessions[i-1].token[strings.LastIndexByte(sessions[i-1].token, '.')+1:]
		}
		wg.Go(func() {
			c, f, err := dialFirst(ctx, n.wsURL("chat")+"?"+url.Values{"resume": {token}}.Encode())
			if err != nil {
				errs <- err
				return
			}
			answers[i] = f
			_ = c.Close(websocket.StatusNormalClosure, "")
		})
	}
	honest.send(`{"event":"dmb:message","data":"during the storm","id":1}`)
	if f := honest.next(); f.Event != "dmb:ack" {
		t.Fatalf("the honest client got %+v, want its ack", f)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, f := range answers {
		valid := i%2 == 0
		switch {
		case f.Event != "dmb:connected":
			t.Fatalf("client %d: %+v", i, f)
		case valid && (!f.Resumed || f.CID != sessions[i].cid):
			t.Fatalf("client %d with its token: %+v, want its session resumed", i, f)
		case !valid && (f.Resumed || f.CID == sessions[i].cid):
			t.Fatalf("client %d with a forged token: %+v, want a fresh session", i, f)
		}
	}
}
