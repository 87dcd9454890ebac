package main

import (
	"bytes"
	"context"
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
	"github.com/dmb-broker/dmb/protocol"
)

// loadBackend is the generator's backend: it registers the service and
// listens to its uplink with package backend, like any Go backend, and
// counts what it receives. It publishes its downlink commands itself,
// pipelined, on the downlink channel of its bkid: backend.Publish makes one
// Redis round trip per command, which would make that round trip, not DMB,
// the limit of the broadcast and direct scenarios.
type loadBackend struct {
	rdb  *redis.Client
	b    *backend.Backend
	ch   protocol.Channels
	run  *runClock
	lat  *histogram // uplink: client send to backend receive
	stop context.CancelFunc
	done chan error

	// Counted by the handler, which runs on one goroutine.
	messages     atomic.Int64
	connected    atomic.Int64
	disconnected atomic.Int64
	errorEvents  atomic.Int64
	reordered    atomic.Int64
	lastID       map[string]int64 // handler only: last uplink id per cid
}

// registerTimeout bounds the registration of the load backend.
const registerTimeout = 10 * time.Second

// startBackend registers the backend and waits until it listens.
func startBackend(ctx context.Context, o *options, run *runClock, log *slog.Logger) (*loadBackend, error) {
	rdb := redis.NewClient(&redis.Options{
		Addr:   o.Redis,
		Dialer: redisDialer,
		// A PUBLISH that timed out may have run: never send it twice.
		MaxRetries:  -1,
		DialTimeout: 5 * time.Second,
	})
	lb := &loadBackend{
		rdb: rdb, ch: protocol.NewChannels(o.Prefix), run: run, lat: &histogram{},
		done: make(chan error, 1), lastID: map[string]int64{},
	}
	lb.b = backend.New(rdb, o.Service, backend.Options{Prefix: o.Prefix, Logger: log, RegisterTimeout: 2 * time.Second})
	runCtx, cancel := context.WithCancel(context.Background())
	lb.stop = cancel
	go func() { lb.done <- lb.b.Run(runCtx, lb.handle) }()

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

// handle counts one uplink event. For messages it checks the order of each
// client's ids and records the latency from the client's send.
func (lb *loadBackend) handle(_ context.Context, ev backend.Event) {
	switch ev.Type {
	case backend.EventMessage:
		lb.messages.Add(1)
		if id, err := strconv.ParseInt(string(ev.ID), 10, 64); err == nil {
			if id <= lb.lastID[ev.CID] {
				lb.reordered.Add(1)
			} else {
				lb.lastID[ev.CID] = id
			}
		}
		if t, ok := uplinkSendTime(ev.Data); ok {
			lb.lat.record(int(lb.messages.Load()), time.Duration(lb.run.now()-t))
		}
	case backend.EventClientConnected:
		lb.connected.Add(1)
	case backend.EventClientDisconnected:
		lb.disconnected.Add(1)
	case backend.EventError:
		lb.errorEvents.Add(1)
	}
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
func (lb *loadBackend) publishBatch(ctx context.Context, channel string, cmds [][]byte) (nobody int, err error) {
	pipe := lb.rdb.Pipeline()
	for _, c := range cmds {
		pipe.Publish(ctx, channel, c)
	}
	res, err := pipe.Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("publish %d commands: %w", len(cmds), err)
	}
	for _, r := range res {
		if n, _ := r.(*redis.IntCmd).Result(); n == 0 {
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

// appendDirect appends {"type":"direct","cid":...,"data":...}; cid is a
// DMB cid, which needs no escaping.
func appendDirect(dst []byte, cid string, seq, t int64, payload int, pad []byte) []byte {
	dst = append(dst, `{"type":"direct","cid":"`...)
	dst = append(dst, cid...)
	dst = append(dst, `","data":`...)
	dst = appendData(dst, seq, t, payload, pad)
	return append(dst, '}')
}
