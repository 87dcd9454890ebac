package backend_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

// runBackend runs a backend of service on rdb until the test ends.
func runBackend(t *testing.T, rdb redis.UniversalClient, service string, opts backend.Options) *backend.Backend {
	t.Helper()
	b := backend.New(rdb, service, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func(context.Context, backend.Event) {}) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("backend %s: %v", service, err)
	case <-time.After(nodetest.Wait):
		t.Fatalf("backend %s not registered", service)
	}
	return b
}

// downlink reads what the backends publish on their downlink channels, as
// the DMB nodes get it.
type downlink struct {
	t  *testing.T
	ps *redis.PubSub
}

func listenDownlink(t *testing.T, rdb *redis.Client, bkids ...string) *downlink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	var channels []string
	for _, bkid := range bkids {
		channels = append(channels, "dmb:"+bkid)
	}
	ps := rdb.Subscribe(ctx, channels...)
	t.Cleanup(func() { _ = ps.Close() })
	for range channels {
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatalf("subscribe to %v: %v", channels, err)
		}
	}
	return &downlink{t: t, ps: ps}
}

// next reads the next command published, which must be a command of type
// typ with data, and returns its offset: "" when it was published
// live-only, the position in the history when recoverably.
func (d *downlink) next(typ, data string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	msg, err := d.ps.ReceiveMessage(ctx)
	if err != nil {
		d.t.Fatalf("read the downlink: %v", err)
	}
	var cmd struct {
		Offset string `json:"offset"`
		Type   string `json:"type"`
		Data   string `json:"data"`
	}
	if err := json.Unmarshal([]byte(msg.Payload), &cmd); err != nil || cmd.Type != typ || cmd.Data != data {
		d.t.Fatalf("published %s, want a %s of %q", msg.Payload, typ, data)
	}
	return cmd.Offset
}

// Every command goes through DMB's function, which keeps it in the
// backend's history, unless the backend or the command is live-only;
// presence requests never do.
func TestCommandsAreRecoverableUnlessLiveOnly(t *testing.T) {
	rs := redistest.Start(t)
	nodetest.Start(t, nodetest.Config(t, rs), node.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	rdb := rs.Client()
	b := runBackend(t, rdb, "chat", backend.Options{Logger: nodetest.Logger()})
	live := runBackend(t, rdb, "chat", backend.Options{Logger: nodetest.Logger(), LiveOnly: true})
	dl := listenDownlink(t, rdb, b.BKID(), live.BKID())
	kept := func() int64 { return rdb.XLen(ctx, history.Key("dmb:"+b.BKID())).Val() }

	if err := b.Broadcast(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if o := dl.next("broadcast", "kept"); o == "" || kept() != 1 {
		t.Fatalf("broadcast offset %q, %d in the history: want it recoverable", o, kept())
	}
	if err := b.Room(ctx, "lobby", "kept too"); err != nil {
		t.Fatal(err)
	}
	if o := dl.next("room", "kept too"); o == "" || kept() != 2 {
		t.Fatalf("room offset %q, %d in the history: want it recoverable", o, kept())
	}
	if err := b.Publish(ctx, backend.Command{Type: "broadcast", Data: "live", LiveOnly: true}); err != nil {
		t.Fatal(err)
	}
	if o := dl.next("broadcast", "live"); o != "" {
		t.Fatalf("a live-only command was published with offset %q", o)
	}
	if _, err := b.Presence(ctx, "", backend.PresenceOptions{CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	if o := dl.next("presence", ""); o != "" || kept() != 2 {
		t.Fatalf("a presence request was published with offset %q, %d in the history", o, kept())
	}
	if err := live.Broadcast(ctx, "live backend"); err != nil {
		t.Fatal(err)
	}
	if o := dl.next("broadcast", "live backend"); o != "" {
		t.Fatalf("a live-only backend's broadcast was published with offset %q", o)
	}
	if n := rdb.Exists(ctx, history.Key("dmb:"+live.BKID())).Val(); n != 0 {
		t.Fatal("a live-only backend has a history")
	}
}

// Where Redis cannot run DMB's function (it lost it, or an older DMB never
// loaded it), the library publishes with PUBLISH, live-only, and says so
// once; it tries the function again on every later command.
func TestCommandsFallBackToPublishWithoutTheFunction(t *testing.T) {
	rs := redistest.Start(t)
	nodetest.Start(t, nodetest.Config(t, rs), node.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Wait)
	defer cancel()
	var logs nodetest.Buffer
	rdb := rs.Client()
	b := runBackend(t, rdb, "chat", backend.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	dl := listenDownlink(t, rdb, b.BKID())
	// warnings counts the warnings that the library publishes live-only.
	warnings := func() int {
		n := 0
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "level=WARN") && strings.Contains(line, "Redis cannot run DMB's "+history.Function+" function") {
				n++
			}
		}
		return n
	}
	broadcast := func(data string) string {
		t.Helper()
		if err := b.Broadcast(ctx, data); err != nil {
			t.Fatal(err)
		}
		return dl.next("broadcast", data)
	}

	if err := rdb.FunctionDelete(ctx, "dmb").Err(); err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"fallback 1", "fallback 2"} {
		if o := broadcast(data); o != "" {
			t.Fatalf("a broadcast without the function was published with offset %q", o)
		}
	}
	if w := warnings(); w != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", w, logs.String())
	}
	// DMB loads the function again (as after a Redis restart): the next
	// command is recoverable again.
	if err := history.Load(ctx, rdb, history.Config{Size: history.DefaultSize, TTL: history.DefaultTTL}); err != nil {
		t.Fatal(err)
	}
	if o := broadcast("back"); o == "" {
		t.Fatal("the broadcast once the function is back has no offset")
	}
	// Lost again: said again.
	if err := rdb.FunctionDelete(ctx, "dmb").Err(); err != nil {
		t.Fatal(err)
	}
	if o := broadcast("fallback 3"); o != "" {
		t.Fatalf("a broadcast without the function was published with offset %q", o)
	}
	if w := warnings(); w != 2 {
		t.Fatalf("%d warnings, want 2 (one each time the function went missing):\n%s", w, logs.String())
	}
}
