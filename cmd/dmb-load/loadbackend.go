package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/protocol"
)

// loadBackend is one of the generator's backends: it registers the service
// and listens to its uplink with package backend, like any Go backend, and
// counts what it receives. It publishes its downlink commands itself,
// pipelined, on the downlink channel of its bkid: backend.Publish makes one
// Redis round trip per command, which would make that round trip, not DMB,
// the limit of the broadcast and direct scenarios.
//
// With -backends N, N of them register the same service and DMB spreads the
// clients over them, so that the uplink is read by N subscriptions: one
// reader falls behind a fast uplink, and Redis then disconnects it
// (client-output-buffer-limit pubsub) and what DMB acked is lost to it.
type loadBackend struct {
	rdb  *redis.Client
	b    *backend.Backend
	ch   protocol.Channels
	run  *runClock
	lat  *histogram // uplink: client send to backend receive; shared by the backends
	stop context.CancelFunc
	done chan error

	// recoverable: publishBatch sends FCALL dmb_publish, which keeps each
	// command in the backend's history, rather than PUBLISH (-recoverable).
	recoverable bool

	// Counted by the handler, which runs on one goroutine, and read by others.
	messages     atomic.Int64
	connected    atomic.Int64
	disconnected atomic.Int64
	errorEvents  atomic.Int64
	reordered    atomic.Int64
	undecoded    atomic.Int64
	flood        atomic.Int64      // messages of -flood's connections, not counted above
	lastID       map[string]*int64 // handler only: last uplink id per cid
}

// registerTimeout bounds the registration of the load backend.
const registerTimeout = 10 * time.Second

// startBackends registers n backends of the service, one after the other,
// and waits until each listens. They record uplink latency into lat.
func startBackends(ctx context.Context, o *options, run *runClock, lat *histogram, log *slog.Logger) ([]*loadBackend, error) {
	var bes []*loadBackend
	for i := range o.Backends {
		lb, err := startBackend(ctx, o, run, lat, log)
		if err != nil {
			for _, lb := range bes {
				lb.close()
			}
			return nil, fmt.Errorf("backend %d of %d: %w", i+1, o.Backends, err)
		}
		bes = append(bes, lb)
	}
	return bes, nil
}

// startBackend registers one backend and waits until it listens.
func startBackend(ctx context.Context, o *options, run *runClock, lat *histogram, log *slog.Logger) (*loadBackend, error) {
	rdb := redis.NewClient(&redis.Options{
		Addr:   o.Redis,
		Dialer: redisDialer,
		// A PUBLISH that timed out may have run: never send it twice.
		MaxRetries:  -1,
		DialTimeout: 5 * time.Second,
	})
	lb := &loadBackend{
		rdb: rdb, ch: protocol.NewChannels(o.Prefix), run: run, lat: lat,
		done: make(chan error, 1), lastID: map[string]*int64{}, recoverable: o.Recoverable,
	}
	lb.b = backend.New(rdb, o.Service, backend.Options{Prefix: o.Prefix, Logger: log, RegisterTimeout: 2 * time.Second})
	runCtx, cancel := context.WithCancel(context.Background())
	lb.stop = cancel
	go func() { lb.done <- lb.b.RunRaw(runCtx, lb.handle) }()

	fail := func(err error) (*loadBackend, error) {
		cancel()
		<-lb.done
		_ = rdb.Close()
		return nil, err
	}
	timer := time.NewTimer(registerTimeout)
	defer timer.Stop()
	select {
	case <-lb.b.Ready():
		return lb, nil
	case err := <-lb.done:
		lb.done <- err // for close
		if err == nil {
			err = errors.New("stopped")
		}
		return fail(fmt.Errorf("register backend of %q: %w", o.Service, err))
	case <-timer.C:
		return fail(fmt.Errorf("register backend of %q at redis %s: no answer from DMB within %v", o.Service, o.Redis, registerTimeout))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
}

// handle counts one uplink event. Nearly all are messages, which it reads
// at fixed places without decoding the JSON (see readUplinkMessage): at
// 100k messages/s, encoding/json would make the backend, not DMB, the
// limit. Anything else is decoded.
func (lb *loadBackend) handle(_ context.Context, payload string) {
	if isFloodMessage(payload) {
		lb.flood.Add(1)
		return
	}
	if cid, id, t, hasT, ok := readUplinkMessage(payload); ok {
		lb.message(cid, id, t, hasT)
		return
	}
	var ev backend.Event
	if err := json.Unmarshal([]byte(payload), &ev); err != nil {
		lb.undecoded.Add(1)
		return
	}
	switch ev.Type {
	case backend.EventMessage:
		if string(ev.Data) == floodData {
			lb.flood.Add(1)
			return
		}
		id, err := strconv.ParseInt(string(ev.ID), 10, 64)
		if err != nil {
			id = -1
		}
		t, hasT := uplinkSendTime(ev.Data)
		lb.message(ev.CID, id, t, hasT)
	case backend.EventClientConnected:
		lb.connected.Add(1)
	case backend.EventClientDisconnected:
		lb.disconnected.Add(1)
	case backend.EventError:
		lb.errorEvents.Add(1)
	}
}

// message counts one message of client cid. It checks the order of each
// client's ids (id < 0: none to check) and records the latency from the
// client's send when the data carried its send time t.
func (lb *loadBackend) message(cid string, id, t int64, hasT bool) {
	n := lb.messages.Add(1)
	if id >= 0 {
		// The map keeps its own copy of a new cid: cid may point into a
		// payload that would otherwise stay alive with it.
		last := lb.lastID[cid]
		switch {
		case last == nil:
			first := id
			lb.lastID[strings.Clone(cid)] = &first
		case id <= *last:
			lb.reordered.Add(1)
		default:
			*last = id
		}
	}
	if hasT {
		lb.lat.record(int(n), time.Duration(lb.run.now()-t))
	}
}

// The uplink message event DMB publishes for a frame of the generator's,
// as protocol.AppendMessage writes it (no user: the generator does not use
// auth):
//
//	{"type":"message","cid":"<cid>","data":{"t":<ns>,"p":"xxx"},"id":<id>}
const (
	uplinkMessagePrefix = `{"type":"message","cid":"`
	uplinkDataMark      = `","data":`
	uplinkTimePrefix    = `{"t":`
	uplinkIDMark        = `,"id":`
)

// readUplinkMessage reads the cid, the id and the send time of an uplink
// message event without allocating; ok is false for any other shape, which
// the caller then decodes as JSON. The id is the last field and the data is
// the generator's own object, so the last ,"id": is the id's.
func readUplinkMessage(p string) (cid string, id, t int64, hasT, ok bool) {
	rest, found := strings.CutPrefix(p, uplinkMessagePrefix)
	if !found {
		return "", 0, 0, false, false
	}
	i := strings.IndexByte(rest, '"')
	if i <= 0 {
		return "", 0, 0, false, false
	}
	cid, rest = rest[:i], rest[i:]
	if rest, found = strings.CutPrefix(rest, uplinkDataMark); !found || !strings.HasSuffix(rest, "}") {
		return "", 0, 0, false, false
	}
	j := strings.LastIndex(rest, uplinkIDMark)
	if j < 0 {
		return "", 0, 0, false, false
	}
	id, err := strconv.ParseInt(rest[j+len(uplinkIDMark):len(rest)-1], 10, 64)
	if err != nil {
		return "", 0, 0, false, false
	}
	if d, found := strings.CutPrefix(rest[:j], uplinkTimePrefix); found {
		n := 0
		for n < len(d) && n < 19 && d[n] >= '0' && d[n] <= '9' {
			n++
		}
		t, err = strconv.ParseInt(d[:n], 10, 64)
		hasT = err == nil
	}
	return cid, id, t, hasT, true
}

// isFloodMessage tells whether p is the uplink message event of a flood
// frame: {"type":"message","cid":"<cid>","data":"flood",...}.
func isFloodMessage(p string) bool {
	rest, found := strings.CutPrefix(p, uplinkMessagePrefix)
	if !found {
		return false
	}
	i := strings.IndexByte(rest, '"')
	return i > 0 && strings.HasPrefix(rest[i:], uplinkDataMark+floodData+",")
}

// uplinkSendTime reads t from the data {"t":<ns>,...} of an uplink frame.
func uplinkSendTime(data []byte) (int64, bool) {
	const p = `{"t":`
	if !bytes.HasPrefix(data, []byte(p)) {
		return 0, false
	}
	t, _, ok := readInt(data[len(p):])
	return t, ok
}

// downlink is the channel the backend publishes on.
func (lb *loadBackend) downlink() string { return lb.ch.Downlink(lb.b.BKID()) }

// publishBatch publishes the commands in one pipeline, in order, and
// returns how many of them no DMB node received (PUBLISH answered 0).
// A recoverable backend sends each with FCALL dmb_publish, whose answer is
// PUBLISH's; there is no fallback to PUBLISH: a Redis without DMB's
// function fails the run rather than measure live-only publishing.
func (lb *loadBackend) publishBatch(ctx context.Context, channel string, cmds [][]byte) (nobody int, err error) {
	pipe := lb.rdb.Pipeline()
	keys := []string{channel}
	for _, c := range cmds {
		if lb.recoverable {
			pipe.FCall(ctx, history.Function, keys, c)
		} else {
			pipe.Publish(ctx, channel, c)
		}
	}
	res, err := pipe.Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("publish %d commands: %w", len(cmds), err)
	}
	for _, r := range res {
		var n int64
		switch c := r.(type) {
		case *redis.IntCmd:
			n = c.Val()
		case *redis.Cmd:
			n, _ = c.Int64()
		}
		if n == 0 {
			nobody++
		}
	}
	return nobody, nil
}

// redisCPU is the CPU-seconds Redis has used (INFO cpu), so that a run on
// a small machine shows where the cores went.
func (lb *loadBackend) redisCPU(ctx context.Context) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := lb.rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("INFO cpu %s: %w", k, err)
			}
			total += f
		}
	}
	return total, nil
}

// close leaves (the generator's clients are gone by then), stops listening
// and closes the Redis client.
func (lb *loadBackend) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = lb.b.Leave(ctx)
	lb.stop()
	<-lb.done
	_ = lb.rdb.Close()
}

// discardLogger is the backend library's logger unless -v is given.
func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Downlink command encoding. data is {"s":<seq>,"t":<ns>,"p":"xxx..."}
// padded to the payload size; the client reads s and t at fixed offsets.

// appendData appends the data object of message seq sent at t.
func appendData(dst []byte, seq, t int64, payload int, pad []byte) []byte {
	mark := len(dst)
	dst = append(dst, `{"s":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,"t":`...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"p":"`...)
	dst = appendPad(dst, payload-(len(dst)-mark)-2, pad)
	return append(dst, `"}`...)
}

// appendBroadcast appends {"type":"broadcast","data":...}.
func appendBroadcast(dst []byte, seq, t int64, payload int, pad []byte) []byte {
	dst = append(dst, `{"type":"broadcast","data":`...)
	dst = appendData(dst, seq, t, payload, pad)
	return append(dst, '}')
}

// appendRoom appends {"type":"room","room":...,"data":...}; room is one of
// the generator's names, which need no escaping.
func appendRoom(dst []byte, room string, seq, t int64, payload int, pad []byte) []byte {
	dst = append(dst, `{"type":"room","room":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","data":`...)
	dst = appendData(dst, seq, t, payload, pad)
	return append(dst, '}')
}

// appendJoin appends {"type":"join","room":...,"cid":...}.
func appendJoin(dst []byte, room, cid string) []byte {
	dst = append(dst, `{"type":"join","room":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","cid":"`...)
	dst = append(dst, cid...)
	return append(dst, `"}`...)
}

// appendDirect appends {"type":"direct","cid":...,"data":...}; cid is a
// DMB cid, which needs no escaping.
func appendDirect(dst []byte, cid string, seq, t int64, payload int, pad []byte) []byte {
	dst = append(dst, `{"type":"direct","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, `","data":`...)
	dst = appendData(dst, seq, t, payload, pad)
	return append(dst, '}')
}
