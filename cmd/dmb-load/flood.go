package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// The flood (-flood N) is an attack that runs beside any scenario, so that
// the honest clients' figures say what a flood costs them. N connections
// to the same service, from a source address of their own, each write the
// same small frame as fast as the socket takes it, read (and discard) what
// DMB sends, and reconnect at once when closed or refused, from the start
// of the measured window to its end. With -flood-reconnect each also closes
// itself and reconnects after every floodReconnectEvery frames, as a
// flooder that wants a fresh rate-limit burst per connection does. They
// are not among the measured clients, and the backends count their
// messages apart.
//
// The flooders use the clients' handshake (upgradeClient), then write
// pre-masked frames straight to the socket in batches: the reader, muted,
// writes nothing, so that it never waits behind a write that DMB does not
// read. DMB sends no pings, so none is answered.

const (
	// floodFrame is what a flooder sends, again and again.
	floodFrame = `{"event":"dmb:message","data":"flood","id":1}`
	// floodData is its data as DMB passes it to the backend.
	floodData = `"flood"`
	// floodReconnectEvery is the frames per connection with -flood-reconnect.
	floodReconnectEvery = 200
	// floodBatch is the frames a flooder writes at once.
	floodBatch = 64
	// floodDialPause is the pause after a dial that failed (no connection
	// at all), so that a flooder does not spin while the node is away.
	floodDialPause = 10 * time.Millisecond
	// floodCloseWait bounds the write of a flooder's own close frame.
	floodCloseWait = 100 * time.Millisecond
	// maxFlood bounds -flood.
	maxFlood = 1000
	maxRooms = 100000
)

// flood is the running attack. Its goroutines are started by startFlood
// and stopped, every one, by stop.
type flood struct {
	ep        *endpoint
	d         *net.Dialer
	source    string
	n         int
	every     int // frames per connection; 0: no bound
	readLimit int

	cancel     context.CancelFunc
	wg         sync.WaitGroup
	once       sync.Once
	start, end time.Time

	frames     atomic.Int64 // whole frames the sockets took
	opened     atomic.Int64 // TCP connections made
	refused    atomic.Int64 // handshakes that did not reach dmb:connected
	sessions   atomic.Int64 // handshakes that did
	selfClosed atomic.Int64 // sessions the flooder ended itself
	acks       atomic.Int64 // dmb:ack frames read

	mu         sync.Mutex // guards the maps
	dialErrors map[string]int
	refusals   map[string]int
	closes     map[string]int // by the close code DMB sent, or 1006
	errors     map[string]int // dmb:error frames read, by text
}

// floodSource is the flooders' source address: the loopback address
// after the clients' (-sources), so that a node that limits per address
// tells them apart; for an IPv6 target, ::1, which the kernel picks.
func floodSource(o *options) netip.Addr {
	if o.clientIPv6() {
		return netip.Addr{}
	}
	return sourceAddrs(o.Sources+1, false)[o.Sources]
}

// startFlood starts o.Flood flooders on ep; they run until stop or the
// end of ctx.
func startFlood(ctx context.Context, o *options, ep *endpoint) *flood {
	src := floodSource(o)
	f := &flood{
		ep: ep, d: dialer(src), source: src.String(), n: o.Flood, readLimit: o.Payload + 4096,
		dialErrors: map[string]int{}, refusals: map[string]int{}, closes: map[string]int{}, errors: map[string]int{},
	}
	if !src.IsValid() {
		f.source = "::1"
	}
	if o.FloodReconnect {
		f.every = floodReconnectEvery
	}
	ctx, f.cancel = context.WithCancel(ctx)
	f.start = time.Now()
	for range f.n {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.flooder(ctx)
		}()
	}
	return f
}

// stop ends the flood and waits for every one of its goroutines. It may
// be called more than once, and on a nil flood.
func (f *flood) stop() {
	if f == nil {
		return
	}
	f.once.Do(func() {
		f.end = time.Now()
		f.cancel()
		f.wg.Wait()
	})
}

// flooder connects, floods, and connects again, until ctx ends.
func (f *flood) flooder(ctx context.Context) {
	frames := floodFrames(floodBatch)
	for ctx.Err() == nil {
		if c := f.open(ctx); c != nil {
			f.session(ctx, c, frames)
		}
	}
}

// floodFrames is n masked copies of floodFrame, each with a key of its own.
func floodFrames(n int) []byte {
	var b []byte
	for range n {
		var key [4]byte
		binary.LittleEndian.PutUint32(key[:], mrand.Uint32())
		b = wsframe.AppendMasked(b, wsframe.OpText, []byte(floodFrame), key)
	}
	return b
}

// open dials and makes the handshake, counting what happened; it returns
// nil when there is no session. What the end of the flood interrupts is
// not counted as a failure.
func (f *flood) open(ctx context.Context) *client {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	nc, err := f.d.DialContext(hctx, "tcp", f.ep.addr)
	if err != nil {
		if ctx.Err() == nil {
			f.count(f.dialErrors, failureReason(err))
			sleepCtx(ctx, floodDialPause)
		}
		return nil
	}
	f.opened.Add(1)
	c, err := upgradeClient(hctx, nc, f.ep, f.readLimit)
	if err != nil {
		if ctx.Err() == nil {
			f.refused.Add(1)
			f.count(f.refusals, failureReason(err))
			if code := websocket.CloseStatus(err); code != -1 {
				f.count(f.closes, strconv.Itoa(int(code)))
			}
		}
		return nil
	}
	f.sessions.Add(1)
	return c
}

// session floods one connection until DMB closes it, it breaks, the
// flooder's frames per connection are sent, or ctx ends; it returns when
// the connection's reader has ended.
func (f *flood) session(ctx context.Context, c *client, frames []byte) {
	nc := c.conn.Conn
	c.conn.mute()
	var self atomic.Bool // the flooder closed the connection itself
	var endErr error
	var ours bool // the flooder had closed it when the reader ended
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		endErr = f.read(c.in)
		ours = self.Load()
		_ = nc.Close()
	}()
	stop := context.AfterFunc(ctx, func() {
		self.Store(true)
		_ = nc.SetDeadline(time.Unix(1, 0))
	})
	f.write(nc, frames, &self)
	stop()
	// The write failed or the flooder closed the connection: the reader
	// sees the end soon. A connection that stays half open is closed.
	t := time.NewTimer(closeWait)
	select {
	case <-ended:
	case <-ctx.Done():
		self.Store(true)
		_ = nc.Close()
		<-ended
	case <-t.C:
		_ = nc.Close()
		<-ended
	}
	t.Stop()
	// A close frame read after the flooder closed the connection is DMB's
	// answer to the flooder's close, not a close of DMB's.
	switch code := websocket.CloseStatus(endErr); {
	case code != -1 && !ours:
		f.count(f.closes, strconv.Itoa(int(code)))
	case ours || self.Load():
		f.selfClosed.Add(1)
	default:
		f.count(f.closes, strconv.Itoa(int(websocket.StatusAbnormalClosure)))
	}
}

// write writes frames (floodBatch of them) again and again until a write
// fails; with a bound of frames per connection, it then sends a close
// frame and closes the connection itself.
func (f *flood) write(nc net.Conn, frames []byte, self *atomic.Bool) {
	size := len(frames) / floodBatch
	sent := 0
	for {
		n := floodBatch
		if f.every > 0 {
			if n = min(n, f.every-sent); n == 0 {
				self.Store(true)
				_ = nc.SetWriteDeadline(time.Now().Add(floodCloseWait))
				var key [4]byte
				binary.LittleEndian.PutUint32(key[:], mrand.Uint32())
				_, _ = nc.Write(wsframe.AppendMasked(nil, wsframe.OpClose, closePayload(websocket.StatusNormalClosure, ""), key))
				_ = nc.Close()
				return
			}
		}
		w, err := nc.Write(frames[:n*size])
		f.frames.Add(int64(w / size))
		sent += n
		if err != nil {
			return
		}
	}
}

// read reads what DMB sends until the connection ends, and counts its
// acks and errors.
func (f *flood) read(in *inbox) error {
	var acks int64
	var errs map[string]int
	defer func() {
		f.acks.Add(acks)
		if len(errs) > 0 {
			f.mu.Lock()
			for k, n := range errs {
				addCount(f.errors, k, n)
			}
			f.mu.Unlock()
		}
	}()
	for {
		p, err := in.next()
		if err != nil {
			return err
		}
		switch {
		case bytes.HasPrefix(p, prefixAck):
			acks++
		case bytes.HasPrefix(p, prefixError):
			if errs == nil {
				errs = map[string]int{}
			}
			text := errorText(p)
			if _, ok := errs[string(text)]; ok {
				errs[string(text)]++
			} else {
				addCount(errs, string(text), 1)
			}
		}
	}
}

// errorText is the text of a dmb:error frame, as DMB writes it
// ({"event":"dmb:error","id":1,"error":"rate limited"}), or "?".
func errorText(p []byte) []byte {
	const mark = `"error":"`
	i := bytes.Index(p, []byte(mark))
	if i < 0 {
		return []byte("?")
	}
	rest := p[i+len(mark):]
	if j := bytes.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return []byte("?")
}

// count adds one to m[key] under the lock.
func (f *flood) count(m map[string]int, key string) {
	f.mu.Lock()
	addCount(m, key, 1)
	f.mu.Unlock()
}

// addCount adds n to m[key], or to m["other"] once m holds
// maxFailureKinds keys.
func addCount(m map[string]int, key string, n int) {
	if _, ok := m[key]; !ok && len(m) >= maxFailureKinds {
		key = "other"
	}
	m[key] += n
}

// floodReport is the flood's section of the report.
type floodReport struct {
	Connections       int            `json:"connections"`     // -flood
	ReconnectEvery    int            `json:"reconnect_every"` // frames per connection (-flood-reconnect); 0: none
	Source            string         `json:"source"`
	Seconds           float64        `json:"seconds"`
	FramesSent        int64          `json:"frames_sent"`
	FramesPerSecond   float64        `json:"frames_per_second"`
	ConnectionsOpened int64          `json:"connections_opened"` // TCP connections made
	DialErrors        map[string]int `json:"dial_errors"`
	HandshakesRefused int64          `json:"handshakes_refused"` // not a 101, or closed before dmb:connected
	Refusals          map[string]int `json:"refusals"`
	Sessions          int64          `json:"sessions"`          // reached dmb:connected
	ClosesByCode      map[string]int `json:"closes_by_code"`    // DMB's close codes, refusals too; 1006: dropped
	ClosedByFlooder   int64          `json:"closed_by_flooder"` // -flood-reconnect, and at the end
	Acks              int64          `json:"acks"`
	Errors            map[string]int `json:"errors"` // dmb:error answers, by text
	BackendReceived   int64          `json:"backend_received"`
}

// report sums the flood up, once it stopped; backendReceived is the flood
// messages the backends counted.
func (f *flood) report(backendReceived int64) *floodReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	secs := f.end.Sub(f.start).Seconds()
	return &floodReport{
		Connections: f.n, ReconnectEvery: f.every, Source: f.source,
		Seconds:           round3(secs),
		FramesSent:        f.frames.Load(),
		FramesPerSecond:   round1(float64(f.frames.Load()) / secs),
		ConnectionsOpened: f.opened.Load(),
		DialErrors:        f.dialErrors,
		HandshakesRefused: f.refused.Load(),
		Refusals:          f.refusals,
		Sessions:          f.sessions.Load(),
		ClosesByCode:      f.closes,
		ClosedByFlooder:   f.selfClosed.Load(),
		Acks:              f.acks.Load(),
		Errors:            f.errors,
		BackendReceived:   backendReceived,
	}
}

// floodText is the flood's rows of the table.
func floodText(row func(k, format string, a ...any), fr *floodReport) {
	how := "reconnecting when closed"
	if fr.ReconnectEvery > 0 {
		how = fmt.Sprintf("reconnecting every %d frames and when closed", fr.ReconnectEvery)
	}
	row("flood", "%d connections from %s, %s: %d frames in %.2f s (%.0f/s)", fr.Connections, fr.Source, how, fr.FramesSent, fr.Seconds, fr.FramesPerSecond)
	row("flood conns", "%d opened%s, %d refused%s, %d sessions, %d closed by the flooder", fr.ConnectionsOpened, labelled("dial errors", fr.DialErrors), fr.HandshakesRefused, failureText(fr.Refusals), fr.Sessions, fr.ClosedByFlooder)
	row("flood closes", "%s", orNone(fr.ClosesByCode))
	row("flood answers", "%d acks, errors: %s; backend received %d", fr.Acks, orNone(fr.Errors), fr.BackendReceived)
}

// labelled is " (label: a: 1, b: 2)" for a non-empty m, "" otherwise.
func labelled(label string, m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	return " (" + label + ": " + failureText(m)[2:]
}

// orNone is "a: 1, b: 2" for a non-empty m, "none" otherwise.
func orNone(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	s := failureText(m)
	return s[2 : len(s)-1]
}
