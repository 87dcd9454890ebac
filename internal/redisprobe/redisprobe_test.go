package redisprobe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// records is a slog.Handler that hands every record to a channel.
type records chan slog.Record

func (r records) Enabled(context.Context, slog.Level) bool        { return true }
func (r records) Handle(_ context.Context, rec slog.Record) error { r <- rec; return nil }
func (r records) WithAttrs([]slog.Attr) slog.Handler              { return r }
func (r records) WithGroup(string) slog.Handler                   { return r }

// next waits for the next record, at most 10 s.
func (r records) next(t *testing.T) (slog.Level, string, map[string]string) {
	t.Helper()
	select {
	case rec := <-r:
		attrs := map[string]string{}
		rec.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
		return rec.Level, rec.Message, attrs
	case <-time.After(10 * time.Second):
		t.Fatal("no log line within 10s")
		return 0, "", nil
	}
}

// The operator learns once that Redis went away, with its address and what
// to check, and once that it is back; nothing in between at this pace.
func TestOutageIsLoggedOnceWithTheAddressAndWhatToCheckAndTheRecovery(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	log := make(records, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, rdb, Config{Target: rs.Addr(), Interval: 20 * time.Millisecond, Remind: time.Hour, Logger: slog.New(log)})
	}()
	defer func() { cancel(); <-done }()

	rs.Kill()
	level, msg, attrs := log.next(t)
	if level != slog.LevelError || !strings.HasPrefix(msg, "redis unreachable") || attrs["redis"] != rs.Addr() {
		t.Fatalf("first line %v %q %v, want an error naming %s", level, msg, attrs, rs.Addr())
	}
	if want := "nothing listens at " + rs.Addr() + ": start Redis there, or set REDIS_HOST and REDIS_PORT"; !strings.HasPrefix(attrs["check"], want) {
		t.Fatalf("check = %q, want it to start %q", attrs["check"], want)
	}

	rs.Restart()
	level, msg, attrs = log.next(t)
	if level != slog.LevelInfo || msg != "redis reachable again" || attrs["redis"] != rs.Addr() {
		t.Fatalf("after the restart: %v %q %v, want redis reachable again", level, msg, attrs)
	}
}

// A node that starts without Redis says so at once, and reminds the
// operator while it lasts.
func TestRedisDownAtStartIsLoggedAtOnceAndRemindedOf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	log := make(records, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, rdb, Config{Target: addr, Interval: 20 * time.Millisecond, Remind: 50 * time.Millisecond, Logger: slog.New(log)})
	}()
	defer func() { cancel(); <-done }()
	if level, msg, attrs := log.next(t); level != slog.LevelError || !strings.HasPrefix(msg, "redis unreachable") || attrs["redis"] != addr {
		t.Fatalf("first line %v %q %v", level, msg, attrs)
	}
	if level, msg, attrs := log.next(t); level != slog.LevelWarn || msg != "redis still unreachable" || attrs["down_for"] == "" {
		t.Fatalf("reminder %v %q %v", level, msg, attrs)
	}
}

func TestHintSaysWhatToCheck(t *testing.T) {
	const target = "redis.internal:6379"
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("dial tcp 10.0.0.1:6379: connect: connection refused"), "nothing listens at redis.internal:6379: start Redis there"},
		{fmt.Errorf("dial: %w", &net.DNSError{Err: "no such host", Name: "redis.internal", IsNotFound: true}), "the host name of redis.internal:6379 does not resolve: check REDIS_HOST"},
		{errors.New("WRONGPASS invalid username-password pair or user is disabled."), "Redis refused the credentials: check REDIS_USERNAME and REDIS_PASSWORD"},
		{errors.New("NOAUTH Authentication required."), "Redis refused the credentials"},
		{errors.New("tls: first record does not look like a TLS handshake"), "the TLS handshake with redis.internal:6379 failed: check REDIS_TLS"},
		{errors.New("EOF"), "redis.internal:6379 closed the connection: if the server speaks TLS, set REDIS_TLS=true"},
		{context.DeadlineExceeded, "no answer from redis.internal:6379 in time"},
		{errors.New("dial tcp 10.0.0.1:6379: i/o timeout"), "no answer from redis.internal:6379 in time"},
		{errors.New("something else"), "check that Redis runs at redis.internal:6379 and that the REDIS_* settings match it"},
	} {
		if got := Hint(tc.err, target); !strings.HasPrefix(got, tc.want) {
			t.Errorf("Hint(%v) = %q, want it to start %q", tc.err, got, tc.want)
		}
	}
}
