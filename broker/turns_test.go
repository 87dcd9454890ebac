package broker

import (
	"bytes"
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// On one processor, a goroutine that writes to many clients takes turns
// with the others: the tests here run with GOMAXPROCS 1.

// A fan-out of large frames lets the other goroutines run before it ends:
// written inline, a 256 kB broadcast to a hundred clients is 25 MB of
// copies, which took 15 to 25 ms with nothing else running.
func TestAFanOutOfLargeFramesTakesTurns(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	brk := New(liveRegistry{}, nullUplink{}, testConfig())
	list := make([]*session, 100)
	for i := range list {
		tr := &recordingTransport{}
		list[i] = newSession(brk, tr, tr, "chat", "127.0.0.1", identity{})
	}
	frame := bytes.Repeat([]byte("x"), 64<<10)
	p := &prepared{payload: frame, sharers: len(list), wire: frame}

	var ended atomic.Bool
	seen := make(chan bool, 1)
	go func() { seen <- ended.Load() }() // ready, waiting for the processor
	if n := p.sendList(list); n != len(list) {
		t.Fatalf("delivered to %d of %d sessions", n, len(list))
	}
	ended.Store(true)
	if <-seen {
		t.Error("a goroutine ready before a fan-out of 6.4 MB ran only after it ended")
	}
}

// loggedTransport takes every write and notes it, by name, in a log that
// sessions share. Its first write waits until gate is closed.
type loggedTransport struct {
	recordingTransport
	name string
	log  *writeLog
	gate chan struct{}
}

type writeLog struct {
	mu     sync.Mutex
	names  []string
	firsts []byte // the first byte of each frame written, in order
}

func (l *writeLog) written() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.names)
}

// TryWriteMany and WriteMany are called by one writer at a time, so gate
// needs no lock.
func (l *loggedTransport) TryWriteMany(frames [][]byte) (bool, bool) {
	_ = l.WriteMany(frames)
	return true, false
}

func (l *loggedTransport) WriteMany(frames [][]byte) error {
	if l.gate != nil {
		<-l.gate
		l.gate = nil
	}
	l.log.mu.Lock()
	l.log.names = append(l.log.names, l.name)
	for _, f := range frames {
		l.log.firsts = append(l.log.firsts, f[0])
	}
	l.log.mu.Unlock()
	return nil
}

// A flusher serves its sessions in turns of about a chunk: a session with
// a megabyte queued does not make the one behind it wait for all of it.
// Turns as long as the queue made honest clients' acks wait behind a
// hundred clients that never read, each taking its kernel buffer's 2 MiB.
func TestAFlusherServesItsSessionsInTurns(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // one flusher
	brk := newTestBroker(t)
	log := &writeLog{}
	gate := make(chan struct{})
	big := &loggedTransport{name: "big", log: log, gate: gate}
	small := &loggedTransport{name: "small", log: log}
	sb := newSession(brk, big, big, "chat", "127.0.0.1", identity{})
	ss := newSession(brk, small, small, "chat", "127.0.0.1", identity{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, ctx, func() bool { // Run has started the flusher
		brk.flushMu.RLock()
		defer brk.flushMu.RUnlock()
		return brk.flushersOn
	})

	const chunks = 16
	for i := range chunks { // the flusher takes the first, and waits at the gate
		if !sb.send(bytes.Repeat([]byte{byte('a' + i)}, inlineChunk)) {
			t.Fatal("a frame was refused")
		}
	}
	if !ss.send([]byte("!ack")) {
		t.Fatal("a frame was refused")
	}
	close(gate)
	var got []string
	waitFor(t, ctx, func() bool {
		got = log.written()
		return len(got) == chunks+1
	})
	if i := slices.Index(got, "small"); i > 1 {
		t.Errorf("the small session was written after %d chunks of the big one: %v", i, got)
	}
	log.mu.Lock()
	order := string(log.firsts)
	log.mu.Unlock()
	if got, want := strings.ReplaceAll(order, "!", ""), "abcdefghijklmnop"; got != want {
		t.Errorf("the big session's frames were written in the order %q, want %q", got, want)
	}
}

// stalledTransport has a write stalled for ever: the watchdog drops it. It
// counts the drops, and those made while the broker's index was locked.
type stalledTransport struct {
	recordingTransport
	b               *Broker
	dropped, locked *atomic.Int32
}

func (s *stalledTransport) DropIfStalled(time.Time, time.Duration, time.Duration) bool {
	if s.b.mu.TryLock() {
		s.b.mu.Unlock()
	} else {
		s.locked.Add(1)
	}
	s.dropped.Add(1)
	return true
}

// The watchdog drops the stalled connections with the broker's index
// unlocked, and takes turns while it does: 500 clients that began half a
// frame together were dropped in one loop that held the index, so that
// every session that ended, or began, waited for the whole loop, and the
// honest clients' acks waited up to 56 ms.
func TestTheWatchdogDropsInTurnsWithTheIndexFree(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	brk := newTestBroker(t)
	var dropped, locked atomic.Int32
	const stalled = 100
	for range stalled {
		tr := &stalledTransport{b: brk, dropped: &dropped, locked: &locked}
		if code, reason := brk.add(newSession(brk, tr, tr, "chat", "127.0.0.1", identity{})); code != 0 {
			t.Fatalf("add: %d %s", code, reason)
		}
	}
	seen := make(chan int32, 1)
	go func() { seen <- dropped.Load() }() // ready, waiting for the processor
	buf := brk.closeStalledWrites(context.Background(), time.Now(), nil)
	if n := dropped.Load(); n != stalled {
		t.Fatalf("%d of %d stalled connections dropped", n, stalled)
	}
	if n := locked.Load(); n != 0 {
		t.Errorf("%d of %d connections dropped with the index locked", n, stalled)
	}
	if n := <-seen; n == stalled {
		t.Error("a goroutine ready before the watchdog dropped 100 connections ran only after it ended")
	}
	if len(buf) != 0 || slices.ContainsFunc(buf[:cap(buf)], func(s *session) bool { return s != nil }) {
		t.Error("the watchdog's list still holds sessions after a look")
	}
}

// frameStalledTransport began a frame at since and never finished it; it
// notes when it was dropped.
type frameStalledTransport struct {
	recordingTransport
	since   time.Time
	dropped time.Time
}

func (f *frameStalledTransport) DropIfStalled(now time.Time, _, frame time.Duration) bool {
	if !f.dropped.IsZero() || now.Sub(f.since) <= frame {
		return false
	}
	f.dropped = time.Now()
	return true
}

// Clients that began half a frame together are cut apart: over a quarter
// of the frame timeout, and at most dropTurn at a time, dropPause apart.
// Cut all in one loop, 500 of them and their reconnections took the
// node's core for tens of milliseconds while the honest clients' acks
// waited.
func TestClientsThatStalledTogetherAreCutApart(t *testing.T) {
	const frameTimeout = 10 * time.Second
	brk := New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) { c.FrameTimeout = frameTimeout }))
	began := time.Now()
	const stalled = 200
	list := make([]*frameStalledTransport, stalled)
	for i := range list {
		list[i] = &frameStalledTransport{since: began}
		if code, reason := brk.add(newSession(brk, list[i], list[i], "chat", "127.0.0.1", identity{})); code != 0 {
			t.Fatalf("add: %d %s", code, reason)
		}
	}
	// The looks, on a clock of the test's: two timeouts' worth.
	look := frameTimeout / lookEvery
	var buf []*session
	cuts := map[time.Duration]int{} // how long after the frames began -> connections cut then
	total := 0
	for i := 0; i <= 2*lookEvery; i++ {
		at := time.Duration(i) * look
		lookBegan := time.Now()
		buf = brk.closeStalledWrites(context.Background(), began.Add(at), buf)
		drops := droppedSince(list, lookBegan)
		if len(drops) == 0 {
			continue
		}
		cuts[at], total = len(drops), total+len(drops)
		// On the clock, at most dropTurn drops within any dropPause.
		slices.SortFunc(drops, time.Time.Compare)
		for j := range len(drops) - dropTurn {
			if d := drops[j+dropTurn].Sub(drops[j]); d < dropPause {
				t.Fatalf("%d connections dropped within %s", dropTurn+1, d)
			}
		}
	}
	if total != stalled {
		t.Fatalf("%d of %d stalled connections cut within two timeouts", total, stalled)
	}
	for at, n := range cuts {
		if at <= frameTimeout || at > frameTimeout+frameTimeout/4+look {
			t.Errorf("%d connections cut %s after their frame began, want after %s and within a quarter more", n, at, frameTimeout)
		}
	}
	if len(cuts) < lookEvery/4-1 {
		t.Errorf("%d connections that stalled together were cut in %d looks: %v", stalled, len(cuts), cuts)
	}
}

// droppedSince returns when each connection of list dropped since t was
// dropped.
func droppedSince(list []*frameStalledTransport, t time.Time) []time.Time {
	var at []time.Time
	for _, f := range list {
		if !f.dropped.Before(t) {
			at = append(at, f.dropped)
		}
	}
	return at
}

// BenchmarkWatchdogLook is one look of the watchdog at 5,000 WebSocket
// sessions, none stalled, whose memory other work has pushed out of the
// caches since the last look (it looks lookEvery times per timeout).
func BenchmarkWatchdogLook(b *testing.B) {
	r := newFanoutRig(b, 5000)
	defer r.close()
	other := make([]byte, 64<<20)
	var buf []*session
	for b.Loop() {
		b.StopTimer()
		for i := 0; i < len(other); i += 64 {
			other[i]++
		}
		b.StartTimer()
		buf = r.brk.closeStalledWrites(context.Background(), time.Now(), buf)
	}
}
