package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 10 * time.Second

// logRecords is a slog.Handler that keeps the records at warn and above.
type logRecords struct {
	mu   sync.Mutex
	recs []map[string]string
}

func (l *logRecords) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *logRecords) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"msg": rec.Message}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	l.mu.Lock()
	l.recs = append(l.recs, m)
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// refusals returns the "registration refused" lines so far.
func (l *logRecords) refusals() []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.recs {
		if strings.HasPrefix(r["msg"], "registration refused: ") {
			out = append(out, r)
		}
	}
	return out
}

// testNode is a registry running on a real Redis, as one node has it.
type testNode struct {
	reg *Registry
	m   *metrics.Metrics
	log *logRecords
}

func startRegistries(t *testing.T, rs *redistest.Server, n int) []*testNode {
	t.Helper()
	var nodes []*testNode
	for i := range n {
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), MaxRetries: -1})
		tn := &testNode{m: metrics.New(prometheus.NewRegistry()), log: &logRecords{}}
		tn.reg = New(rdb, Config{
			Channels: protocol.NewChannels("dmb"), NodeID: fmt.Sprintf("node-%d", i), Logger: slog.New(tn.log),
			Metrics: tn.m, BackendTimeout: time.Second, BackendRetention: time.Hour,
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = tn.reg.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; rdb.Close() })
		nodes = append(nodes, tn)
	}
	eventually(t, "registries subscribed", func() bool {
		for _, tn := range nodes {
			if !tn.reg.Ready() {
				return false
			}
		}
		return true
	})
	return nodes
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// publish sends payload on the register channel, waits until every node has
// handled it, and returns the answer on the nonce's channel, "" for none.
func publish(t *testing.T, rs *redistest.Server, nodes []*testNode, nonce, payload string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	rdb := rs.Client()
	var reply *redis.PubSub
	if nonce != "" {
		reply = rdb.Subscribe(ctx, "dmb:register:"+nonce)
		defer reply.Close()
		if _, err := reply.Receive(ctx); err != nil {
			t.Fatal(err)
		}
	}
	handled := func() (n float64) {
		for _, tn := range nodes {
			n += counter(tn.m.MessagesIn.WithLabelValues(metrics.KindRegister))
		}
		return n
	}
	before := handled()
	if err := rdb.Publish(ctx, "dmb:register", payload).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every node to handle the payload", func() bool { return handled() == before+float64(len(nodes)) })
	if reply == nil {
		return ""
	}
	// The answer is published before the payload counts as handled.
	select {
	case m := <-reply.Channel():
		return m.Payload
	case <-time.After(100 * time.Millisecond):
		return ""
	}
}

func rejectedCount(nodes []*testNode, reason string) (n float64) {
	for _, tn := range nodes {
		n += counter(tn.m.RegisterRejected.WithLabelValues(reason))
	}
	return n
}

func allRefusals(nodes []*testNode) (out []map[string]string) {
	for _, tn := range nodes {
		out = append(out, tn.log.refusals()...)
	}
	return out
}

// Every refused registration is counted and logged with the reason and the
// nonce; one that can be answered is answered, and logged by the node that
// answers it only.
func TestRejectedRegistrationsAreLoggedOnceWithTheReasonAndNonceAndCounted(t *testing.T) {
	rs := redistest.Start(t)
	for _, tc := range []struct {
		name, nonce, payload string
		reason, logNonce     string
		answer               string // the nack's error, "" for no answer
		field, value         string // another attribute the line must carry
	}{
		{"invalid JSON", "", `{"type":"bk_connect",`, RejectMalformed, "", "", "payload", `{"type":"bk_connect",`},
		{"not an object", "", `["bk_connect"]`, RejectMalformed, "", "", "error", "payload must be a JSON object"},
		{"a typo in type", "n-typo", `{"type":"bk_conect","nonce":"n-typo","service":"chat"}`, RejectUnknownType, "n-typo", "", "error", `unknown type "bk_conect"`},
		{"no type", "n-none", `{"nonce":"n-none","service":"chat"}`, RejectUnknownType, "n-none", "", "error", "missing type"},
		{"a bad nonce", "", `{"type":"bk_connect","nonce":"n 1","service":"chat"}`, RejectInvalidNonce, "n 1", "", "service", "chat"},
		{"an invalid service", "n-svc", `{"type":"bk_connect","nonce":"n-svc","service":"Chat!"}`, RejectInvalidService, "n-svc", "invalid service name", "service", "Chat!"},
		{"a leave without bkid", "", `{"type":"bk_disconnect"}`, RejectInvalidBKID, "", "", "error", "invalid bkid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := startRegistries(t, rs, 2)
			answer := publish(t, rs, nodes, tc.nonce, tc.payload)
			if tc.answer == "" && answer != "" {
				t.Fatalf("answered %s, want no answer", answer)
			}
			if tc.answer != "" {
				var nack struct{ Type, Error string }
				if err := json.Unmarshal([]byte(answer), &nack); err != nil || nack.Type != "bk_connect_nack" || nack.Error != tc.answer {
					t.Fatalf("answer %q, want bk_connect_nack %q", answer, tc.answer)
				}
			}
			lines := allRefusals(nodes)
			wantLines := 2 // a payload nobody can answer: each node says so
			if tc.answer != "" {
				wantLines = 1 // the node that answers
			}
			if len(lines) != wantLines {
				t.Fatalf("%d log lines %v, want %d", len(lines), lines, wantLines)
			}
			for _, l := range lines {
				if l["msg"] != "registration refused: "+hintFor(tc.reason) {
					t.Errorf("message %q, want what to do about %s", l["msg"], tc.reason)
				}
				if l["reason"] != tc.reason || l["nonce"] != tc.logNonce || !strings.Contains(l[tc.field], tc.value) {
					t.Errorf("line %v, want reason %s, nonce %q and %s %q", l, tc.reason, tc.logNonce, tc.field, tc.value)
				}
			}
			if got := rejectedCount(nodes, tc.reason); got != float64(wantLines) {
				t.Errorf("dmb_register_rejected_total{reason=%q} = %v, want %d", tc.reason, got, wantLines)
			}
		})
	}
}

// A nonce used twice: the second bk_connect is answered with a nack that
// says so, logged once by the node that claimed the nonce the first time.
func TestReusedNonceIsAnsweredAndLoggedOnce(t *testing.T) {
	rs := redistest.Start(t)
	nodes := startRegistries(t, rs, 3)
	const payload = `{"type":"bk_connect","nonce":"n-again","service":"chat"}`
	var ack struct{ Type, BKID string }
	if err := json.Unmarshal([]byte(publish(t, rs, nodes, "n-again", payload)), &ack); err != nil || ack.Type != "bk_connect_ack" {
		t.Fatalf("first bk_connect: %+v %v", ack, err)
	}
	answer := publish(t, rs, nodes, "n-again", payload)
	var nack struct{ Type, Error string }
	if err := json.Unmarshal([]byte(answer), &nack); err != nil || nack.Type != "bk_connect_nack" || nack.Error != reusedNonceError {
		t.Fatalf("second bk_connect answered %q, want a nack %q", answer, reusedNonceError)
	}
	lines := allRefusals(nodes)
	if len(lines) != 1 || lines[0]["reason"] != RejectNonceReused || lines[0]["nonce"] != "n-again" ||
		lines[0]["msg"] != "registration refused: use a new nonce for each bk_connect (answered with bk_connect_nack)" {
		t.Fatalf("log lines %v, want one nonce_reused line with the nonce", lines)
	}
	if got := rejectedCount(nodes, RejectNonceReused); got != 1 {
		t.Fatalf("dmb_register_rejected_total{reason=nonce_reused} = %v, want 1", got)
	}

	// A nonce that a nack claimed, used again, is refused the same way.
	publish(t, rs, nodes, "n-bad", `{"type":"bk_connect","nonce":"n-bad","service":"Bad!"}`)
	answer = publish(t, rs, nodes, "n-bad", `{"type":"bk_connect","nonce":"n-bad","service":"Bad!"}`)
	if err := json.Unmarshal([]byte(answer), &nack); err != nil || nack.Error != reusedNonceError {
		t.Fatalf("a nacked nonce used again: answered %q, want %q", answer, reusedNonceError)
	}
}

// A backend that sends garbage in a loop cannot flood the log: a burst
// goes through, then one line per interval, which says how many it held
// back.
func TestRejectionLogIsRateLimited(t *testing.T) {
	l := newLimiter(3, time.Second)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if _, ok := l.allow(now); !ok {
			t.Fatalf("line %d of the burst held back", i)
		}
	}
	for range 5 {
		if _, ok := l.allow(now.Add(500 * time.Millisecond)); ok {
			t.Fatal("a line past the burst let through")
		}
	}
	suppressed, ok := l.allow(now.Add(time.Second))
	if !ok || suppressed != 5 {
		t.Fatalf("after an interval: ok %v, suppressed %d; want a line saying 5 were held back", ok, suppressed)
	}
}

// counter reads a counter's value.
func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
