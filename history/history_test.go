package history_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/protocol"
)

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// publish calls the function as a backend does and returns the offset
// the live message carried.
func publish(t *testing.T, ctx context.Context, rdb redis.UniversalClient, sub *redis.PubSub, channel, payload string) history.ID {
	t.Helper()
	if err := rdb.FCall(ctx, history.Function, []string{channel}, payload).Err(); err != nil {
		t.Fatalf("FCALL: %v", err)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	cmd, err := protocol.DecodeCommand([]byte(msg.Payload))
	if err != nil {
		t.Fatalf("the live message %s is not a command: %v", msg.Payload, err)
	}
	id, ok := history.ParseID(cmd.Offset)
	if !ok {
		t.Fatalf("the live message %s has no offset", msg.Payload)
	}
	return id
}

func TestAMessageIsStoredAndPublishedWithItsOffset(t *testing.T) {
	for _, topo := range []string{"single", "cluster"} {
		t.Run(topo, func(t *testing.T) {
			ctx := ctxFor(t)
			var rdb redis.UniversalClient
			var sub *redis.PubSub
			if topo == "cluster" {
				cc := redistest.StartCluster(t, 3, 0).Client()
				rdb, sub = cc, cc.SSubscribe(ctx, "dmb:42")
			} else {
				c := redistest.Start(t).Client()
				rdb, sub = c, c.Subscribe(ctx, "dmb:42")
			}
			defer sub.Close()
			if _, err := sub.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			cfg := history.Config{Size: 3, TTL: time.Minute}
			if err := history.Load(ctx, rdb, cfg); err != nil {
				t.Fatal(err)
			}
			var ids []history.ID
			for i := range 5 {
				ids = append(ids, publish(t, ctx, rdb, sub, "dmb:42", `{"type":"broadcast","data":`+string(rune('0'+i))+`}`))
			}
			for i := 1; i < len(ids); i++ {
				if !ids[i-1].Less(ids[i]) {
					t.Fatalf("offsets not increasing: %v", ids)
				}
			}
			// Size 3: the first two are trimmed. From the third on is covered.
			got, err := history.Read(ctx, rdb, []history.Want{
				{Channel: "dmb:42", From: ids[2], Seen: true},
				{Channel: "dmb:42", From: ids[1], Seen: true},                             // trimmed: whether it was the last trimmed cannot be told
				{Channel: "dmb:42", From: ids[0], Seen: true},                             // ids[1] is missing after it
				{Channel: "dmb:42", From: history.ID{MS: ids[2].MS, Seq: 99}, Seen: true}, // never existed
				{Channel: "dmb:7", From: ids[0], Seen: true},                              // no history at all
				{Channel: "dmb:42", From: ids[2]},                                         // a session that began at the first kept
				{Channel: "dmb:42", From: ids[1]},                                         // one that began before the trimmed
			}, 100)
			if err != nil {
				t.Fatal(err)
			}
			want := []struct {
				n       int
				covered bool
			}{{2, true}, {3, false}, {3, false}, {-1, false}, {0, true}, {3, true}, {3, false}}
			for i, w := range want {
				if got[i].Covered != w.covered || (w.n >= 0 && len(got[i].Entries) != w.n) {
					t.Errorf("want %d: %d entries, covered %v; want %d, %v", i, len(got[i].Entries), got[i].Covered, w.n, w.covered)
				}
			}
			if e := got[0].Entries; len(e) == 2 && (e[0].ID != ids[3] || e[1].ID != ids[4] || string(e[1].Payload) != `{"type":"broadcast","data":4}`) {
				t.Errorf("entries %+v, want ids %v and %v with the payload as published", e, ids[3], ids[4])
			}
			// Loading again (a restart of DMB, or of Redis) replaces it.
			if err := history.Load(ctx, rdb, cfg); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTheFunctionRefusesWhatIsNotAJSONObject(t *testing.T) {
	ctx := ctxFor(t)
	rdb := redistest.Start(t).Client()
	if err := history.Load(ctx, rdb, history.Config{Size: 10, TTL: time.Minute, MaxBytes: 64}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"", "[]", "{}", "hello", " 42", `{"type":"broadcast"`} {
		err := rdb.FCall(ctx, history.Function, []string{"dmb:42"}, p).Err()
		if err == nil || !strings.Contains(err.Error(), "JSON object") {
			t.Errorf("payload %q: %v, want refused", p, err)
		}
	}
	big := `{"type":"broadcast","data":"` + strings.Repeat("x", 64) + `"}`
	if err := rdb.FCall(ctx, history.Function, []string{"dmb:42"}, big).Err(); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("a payload over DMB_MAX_BACKEND_BYTES: %v, want refused", err)
	}
	if n := rdb.Exists(ctx, history.Key("dmb:42")).Val(); n != 0 {
		t.Errorf("a refused payload was stored")
	}
}

func TestParseOffsets(t *testing.T) {
	valid := func(s string) bool { return protocol.ValidBKID(s) }
	got, bad := history.ParseOffsets("42:10-1,43:5-0,42:11-0,x:1-1,42:zz,44", valid)
	if bad != 3 || len(got) != 2 || got[0].String() != "42:11-0" || got[1].String() != "43:5-0" {
		t.Fatalf("got %v, bad %d", got, bad)
	}
	many := strings.Repeat("1:1-1,", history.MaxOffsets+3)
	if _, bad := history.ParseOffsets(strings.TrimSuffix(many, ","), valid); bad != 3 {
		t.Fatalf("over the cap: bad %d, want 3", bad)
	}
}
