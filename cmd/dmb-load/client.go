package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/dmb-broker/dmb/internal/wsframe"
)

// client is one WebSocket connection to DMB. Its reader goroutine, started
// by startReading and ended by close, handles every frame DMB sends; in the
// uplink scenario a sender goroutine (sendLoop) writes its frames, and in a
// closed loop the reader too. Counters the other goroutines read are
// atomic; the rest belong to the reader and are read only after it ended.
type client struct {
	idx  int
	mu   sync.Mutex    // guards conn, which a resume replaces (resume scenario)
	conn *upgradedConn // the reader's; others take it with current
	in   *inbox        // the reader's
	cid  string
	lat  *histogram // downlink latency or ack latency
	run  *runClock

	// The session (docs/protocol.md, section 11): the newest token DMB
	// gave, from dmb:connected or dmb:session, and what the last
	// dmb:connected said. The reader's once it started.
	session   string
	resumed   bool
	recovered bool

	rs *resumeState // resume scenario only

	ended    chan struct{} // closed when the reader returns
	endErr   error         // why it returned; read after ended
	gone     atomic.Bool   // the connection ended before the generator closed it
	closing  atomic.Bool   // the generator is closing it
	received atomic.Int64  // broadcast and direct frames
	sentTo   atomic.Int64  // direct, room: messages the backend published to this client
	joined   atomic.Int64  // room: dmb:joined frames

	lastSeq     int64 // reader only
	reordered   int64 // reader only
	duplicates  int64 // reader only
	withOffset  int64 // reader only: data frames with an offset (recoverable)
	undecoded   int64 // reader only: frames the generator could not read
	strayErrs   int64 // reader only: dmb:error without an id of ours
	untimedAcks int64 // reader only: acks whose send time a later frame took over (an answer came out of order)

	up *uplinkState // uplink scenario only
}

// uplinkState is a client's side of the uplink scenario. sentAt remembers
// when each frame in flight was sent, by id modulo the window.
//
// Under a rate (open loop) the sender takes a token from window per frame
// and the reader gives one back per answer. At full speed (closed loop)
// the sender sends a window of frames, and the reader sends as many again
// as were answered each time it has handed out all it read: the frames of
// one answer go together without a hand-over between goroutines. (An
// answer that arrives during that write is timed when the write returns,
// a few microseconds later.)
type uplinkState struct {
	window   chan struct{}  // open loop only: nil in a closed loop
	answered int            // closed loop, reader only: answers not yet sent again
	sentID   []atomic.Int64 // the id each sentAt is of: an answer out of order finds another
	sentAt   []atomic.Int64
	sent     atomic.Int64
	acked    atomic.Int64
	errored  atomic.Int64 // dmb:error answers to our ids

	payload int    // bytes of each frame's data
	pad     []byte // what pads it

	mu      sync.Mutex // orders send; guards the fields below
	sending bool       // between the start and the end of the run's sending
	end     int64      // when the sending ends, on the run's clock
	buf     []byte     // the frame being built
}

// closedLoop tells whether the clients send at full speed, each answer
// sending the next frame.
func (u *uplinkState) closedLoop() bool { return u.window == nil }

func newUplinkState(window int, closedLoop bool, payload int, pad []byte) *uplinkState {
	u := &uplinkState{sentID: make([]atomic.Int64, window), sentAt: make([]atomic.Int64, window), payload: payload, pad: pad}
	if !closedLoop {
		u.window = make(chan struct{}, window)
	}
	return u
}

// runClock is the run's time base: timestamps in messages are nanoseconds
// since start on the monotonic clock, as generator and DMB share a machine
// (and the generator is both sender and receiver).
type runClock struct{ start time.Time }

func (r *runClock) now() int64 { return int64(time.Since(r.start)) }

// Frames DMB sends, as protocol/client.go encodes them. The fast path
// reads them at fixed offsets; anything else goes through encoding/json.
var (
	prefixBroadcast = []byte(`{"event":"dmb:broadcast","data":`)
	prefixDirect    = []byte(`{"event":"dmb:direct","data":`)
	prefixRoom      = []byte(`{"event":"dmb:room","room":"`)
	prefixAck       = []byte(`{"event":"dmb:ack","id":`)
	prefixError     = []byte(`{"event":"dmb:error",`)
	prefixConnected = []byte(`{"event":"dmb:connected","cid":"`)
	prefixSession   = []byte(`{"event":"dmb:session","session":"`)
	markOffset      = []byte(`,"offset":"`)
	markSession     = []byte(`,"session":"`)
)

type frameKind uint8

const (
	frameOther  frameKind = iota
	frameData             // dmb:broadcast, dmb:direct or dmb:room
	frameJoined           // dmb:joined
	frameAck
	frameError
	frameConnected
	frameSession // dmb:session
)

// frameInfo is what the generator needs of a frame.
type frameInfo struct {
	kind   frameKind
	seq, t int64  // frameData: the message's sequence number and send time
	id     int64  // frameAck, frameError: the id answered (-1 when none)
	cid    string // frameConnected
	ok     bool   // the fields above could be read

	// frameData: the message's offset, "bkid:position", when it is
	// recoverable; frameSession: the new token. Both point into the frame.
	offset, session []byte
}

// readFrame reads what the generator needs of one frame without
// allocating, for the frames DMB writes, and falls back to encoding/json.
func readFrame(f []byte) frameInfo {
	switch {
	case bytes.HasPrefix(f, prefixBroadcast):
		if seq, t, ok := readSeqTime(f[len(prefixBroadcast):]); ok {
			return frameInfo{kind: frameData, seq: seq, t: t, ok: true, offset: trailingOffset(f)}
		}
	case bytes.HasPrefix(f, prefixDirect):
		if seq, t, ok := readSeqTime(f[len(prefixDirect):]); ok {
			return frameInfo{kind: frameData, seq: seq, t: t, ok: true, offset: trailingOffset(f)}
		}
	case bytes.HasPrefix(f, prefixRoom):
		// A room name has no quote: the data follows the first one.
		rest := f[len(prefixRoom):]
		if i := bytes.IndexByte(rest, '"'); i >= 0 && bytes.HasPrefix(rest[i:], []byte(`","data":`)) {
			if seq, t, ok := readSeqTime(rest[i+len(`","data":`):]); ok {
				return frameInfo{kind: frameData, seq: seq, t: t, ok: true, offset: trailingOffset(f)}
			}
		}
	case bytes.HasPrefix(f, prefixSession):
		// A token is base64url and dots: it ends at the first quote.
		rest := f[len(prefixSession):]
		if i := bytes.IndexByte(rest, '"'); i > 0 && string(rest[i:]) == `"}` {
			return frameInfo{kind: frameSession, id: -1, session: rest[:i], ok: true}
		}
	case bytes.HasPrefix(f, prefixAck):
		if id, rest, ok := readInt(f[len(prefixAck):]); ok && len(rest) == 1 && rest[0] == '}' {
			return frameInfo{kind: frameAck, id: id, ok: true}
		}
	}
	return readFrameJSON(f)
}

// trailingOffset is the offset DMB adds as the last member of a
// recoverable message's frame, ...,"offset":"<bkid>:<position>"}; nil when
// there is none. The generator's data ends with "}, and the frame with a
// brace after it: a frame that ends with a quote and a brace has an offset.
func trailingOffset(f []byte) []byte {
	if len(f) < 2 || f[len(f)-1] != '}' || f[len(f)-2] != '"' {
		return nil
	}
	i := bytes.LastIndex(f, markOffset)
	if i < 0 {
		return nil
	}
	return f[i+len(markOffset) : len(f)-2]
}

// readSeqTime reads the start of a data object {"s":<seq>,"t":<ns>,...}.
func readSeqTime(b []byte) (seq, t int64, ok bool) {
	const s, tt = `{"s":`, `,"t":`
	if !bytes.HasPrefix(b, []byte(s)) {
		return 0, 0, false
	}
	seq, b, ok = readInt(b[len(s):])
	if !ok || !bytes.HasPrefix(b, []byte(tt)) {
		return 0, 0, false
	}
	t, b, ok = readInt(b[len(tt):])
	// A number that goes on (9.5, 9e3) is not a send time of ours.
	return seq, t, ok && len(b) > 0 && (b[0] == ',' || b[0] == '}')
}

// readInt reads a non-negative decimal and returns what follows it.
func readInt(b []byte) (int64, []byte, bool) {
	var v int64
	i := 0
	for ; i < len(b) && i < 18 && b[i] >= '0' && b[i] <= '9'; i++ {
		v = v*10 + int64(b[i]-'0')
	}
	return v, b[i:], i > 0
}

// readFrameJSON is the slow path of readFrame.
func readFrameJSON(f []byte) frameInfo {
	var fr struct {
		Event   string `json:"event"`
		CID     string `json:"cid"`
		Session string `json:"session"`
		Offset  string `json:"offset"`
		Data    struct {
			S *int64 `json:"s"`
			T *int64 `json:"t"`
		} `json:"data"`
		ID json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(f, &fr); err != nil {
		// data that is not our object still has an event worth knowing
		var ev struct {
			Event string `json:"event"`
		}
		_ = json.Unmarshal(f, &ev)
		fr.Event = ev.Event
	}
	info := frameInfo{id: -1}
	if len(fr.ID) > 0 {
		if id, err := strconv.ParseInt(string(fr.ID), 10, 64); err == nil {
			info.id = id
		}
	}
	switch fr.Event {
	case "dmb:joined":
		info.kind, info.ok = frameJoined, true
	case "dmb:broadcast", "dmb:direct", "dmb:room":
		info.kind = frameData
		if fr.Data.S != nil && fr.Data.T != nil {
			info.seq, info.t, info.ok = *fr.Data.S, *fr.Data.T, true
		}
		if fr.Offset != "" {
			info.offset = []byte(fr.Offset)
		}
	case "dmb:session":
		info.kind, info.session, info.ok = frameSession, []byte(fr.Session), fr.Session != ""
	case "dmb:ack":
		info.kind, info.ok = frameAck, info.id >= 0
	case "dmb:error":
		info.kind, info.ok = frameError, true
	case "dmb:connected":
		info.kind, info.cid, info.ok = frameConnected, fr.CID, fr.CID != ""
	}
	return info
}

// handshakeTimeout bounds one connection's dial, upgrade and first frame.
const handshakeTimeout = 10 * time.Second

// dialClient connects with d, makes the opening handshake and reads DMB's
// first frame, dmb:connected.
func dialClient(ctx context.Context, d *net.Dialer, e *endpoint, readLimit int) (*client, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", e.addr)
	if err != nil {
		return nil, err
	}
	return upgradeClient(ctx, nc, e, readLimit)
}

// upgradeClient makes the opening handshake on nc and reads DMB's first
// frame, dmb:connected, within ctx; it closes nc when it fails.
func upgradeClient(ctx context.Context, nc net.Conn, e *endpoint, readLimit int) (*client, error) {
	conn := &upgradedConn{Conn: nc, lines: e.tcp}
	if e.sse {
		conn = &upgradedConn{Conn: newSSEStream(nc, e), lines: true, events: true}
	}
	c := &client{ended: make(chan struct{}), conn: conn}
	c.in = newInbox(c.conn, readLimit)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err := c.first(e)
	if !stop() { // ctx ended and put the deadline in the past: that is the failure
		err = ctx.Err()
	}
	if err != nil {
		_ = c.conn.Close()
		return nil, err
	}
	return c, nil
}

// first makes the handshake and reads dmb:connected.
func (c *client) first(e *endpoint) error {
	if err := e.handshake(c.conn, c.in); err != nil {
		return err
	}
	data, err := c.in.next()
	if err != nil {
		return err
	}
	if bytes.HasPrefix(data, prefixConnected) {
		if i := bytes.IndexByte(data[len(prefixConnected):], '"'); i > 0 {
			c.cid = string(data[len(prefixConnected) : len(prefixConnected)+i])
			c.readSession(data)
			return nil
		}
	}
	if info := readFrameJSON(data); info.kind == frameConnected && info.ok {
		c.cid = info.cid
		c.readSession(data)
		return nil
	}
	return fmt.Errorf("first frame is not dmb:connected: %.100q", data)
}

// readSession reads the session token of dmb:connected, and whether the
// connection resumed an earlier session and recovered what it missed:
// {...,"session":"<token>","resumed":<bool>,"recovered":<bool>}. A node
// that could not sign a token sends none.
func (c *client) readSession(data []byte) {
	c.session, c.resumed, c.recovered = "", false, false
	i := bytes.Index(data, markSession)
	if i < 0 {
		return
	}
	rest := data[i+len(markSession):]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 {
		return
	}
	c.session = string(rest[:j])
	rest = rest[j:]
	c.resumed = bytes.Contains(rest, []byte(`"resumed":true`))
	c.recovered = bytes.Contains(rest, []byte(`"recovered":true`))
}

// current is the client's connection now: a resume replaces it.
func (c *client) current() *upgradedConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// startReading starts the reader goroutine, which closes the connection
// when it ends: after DMB's close frame, on an error, or when close gives
// up waiting.
func (c *client) startReading() {
	if u := c.up; u != nil && u.closedLoop() {
		c.in.idle = func() {
			if n := u.answered; n > 0 {
				u.answered = 0
				_ = c.send(n)
			}
		}
	}
	go func() {
		defer close(c.ended)
		for {
			c.endErr = c.readLoop()
			_ = c.conn.Close()
			if c.closing.Load() {
				return
			}
			// In the resume scenario the client takes its session up again
			// elsewhere, as the browser client does.
			if c.rs == nil || !c.rs.resume(c) {
				c.gone.Store(true)
				return
			}
		}
	}()
}

func (c *client) readLoop() error {
	for {
		p, err := c.in.next()
		if err != nil {
			return err
		}
		c.handle(readFrame(p), c.run.now())
	}
}

// closeWait bounds how long close waits for DMB's close frame; a variable
// for the tests.
var closeWait = 5 * time.Second

// close starts the closing handshake with code and waits for the reader
// to end, closing the connection itself after closeWait. The write deadline
// comes first: a write stuck on a stalled connection holds the lock that
// writeFrame takes.
func (c *client) close(code websocket.StatusCode, reason string) {
	deadline := time.Now().Add(closeWait)
	conn := c.current()
	_ = conn.SetWriteDeadline(deadline)
	_ = conn.writeFrame(wsframe.OpClose, closePayload(code, reason))
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-c.ended:
	case <-t.C:
		_ = c.current().Close()
		<-c.ended
	}
}

func (c *client) handle(f frameInfo, now int64) {
	switch f.kind {
	case frameJoined:
		c.joined.Add(1)
	case frameSession:
		c.session = string(f.session)
	case frameData:
		if !f.ok {
			c.undecoded++
			return
		}
		if f.offset != nil {
			c.withOffset++
		}
		if rs := c.rs; rs != nil {
			rs.data(c, f, now)
			return
		}
		c.received.Add(1)
		switch {
		case f.seq < c.lastSeq:
			c.reordered++
		case f.seq == c.lastSeq:
			c.duplicates++
		default:
			c.lastSeq = f.seq
		}
		c.lat.record(c.idx, time.Duration(now-f.t))
	case frameAck, frameError:
		u := c.up
		if u == nil || !f.ok || f.id <= 0 || f.id > u.sent.Load() {
			if f.kind == frameError {
				c.strayErrs++
			} else {
				c.undecoded++
			}
			return
		}
		if f.kind == frameAck {
			if slot := f.id % int64(len(u.sentAt)); u.sentID[slot].Load() == f.id {
				c.lat.record(c.idx, time.Duration(now-u.sentAt[slot].Load()))
			} else {
				c.untimedAcks++
			}
			u.acked.Add(1)
		} else {
			u.errored.Add(1)
		}
		if u.closedLoop() {
			u.answered++
			return
		}
		select { // free the frame's place in the window
		case <-u.window:
		default:
		}
	default:
		c.undecoded++
	}
}

// uplinkFrame appends {"event":"dmb:message","data":{"t":<ns>,"p":"..."},"id":<id>}
// with data of payload bytes (or just the header when payload is smaller).
func uplinkFrame(dst []byte, id, t int64, payload int, pad []byte) []byte {
	dst = append(dst, `{"event":"dmb:message","data":{"t":`...)
	mark := len(dst) - len(`{"t":`)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"p":"`...)
	dst = appendPad(dst, payload-(len(dst)-mark)-2, pad)
	dst = append(dst, `"},"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	return append(dst, '}')
}

// appendPad appends n bytes of padding (none when n <= 0).
func appendPad(dst []byte, n int, pad []byte) []byte {
	if n <= 0 {
		return dst
	}
	return append(dst, pad[:min(n, len(pad))]...)
}

// sendLoop writes uplink frames from start until end: at rate frames/s, or
// at full speed (rate 0) a closed loop, a window of frames that the reader
// keeps full; never more than the window unanswered. Under a rate, frame i
// is due at start + offset + i/rate; a client that falls behind sends at
// once until it has caught up. The frames that may go at the same moment go
// in one write, as a browser writes the frames queued on a WebSocket
// together.
func (c *client) sendLoop(ctx context.Context, start, end time.Time, offset time.Duration, rate float64) {
	u := c.up
	u.mu.Lock()
	u.sending, u.end = true, int64(end.Sub(c.run.start))
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.sending = false
		u.mu.Unlock()
	}()
	if u.closedLoop() {
		if c.send(len(u.sentAt)) == nil {
			<-ctx.Done() // ctx ends at end
		}
		return
	}
	interval := time.Duration(float64(time.Second) / rate)
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	due := func(id int64) time.Time { return start.Add(offset + time.Duration(id-1)*interval) }
	for id := int64(1); ; {
		at := due(id)
		if !at.Before(end) {
			return
		}
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		select {
		case u.window <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := int64(1)
	more: // the window's other free places, for frames already due
		for !time.Now().Before(due(id+n)) && due(id+n).Before(end) {
			select {
			case u.window <- struct{}{}:
				n++
			default:
				break more
			}
		}
		if c.gone.Load() || c.send(int(n)) != nil {
			return
		}
		id += n
	}
}

// send writes n frames in one write; it sends nothing once the sending is
// over, and ends it when the write fails.
func (c *client) send(n int) error {
	u := c.up
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.sending {
		return nil
	}
	c.conn.cork()
	held := int64(0)
	var err error
	for range n {
		id := u.sent.Load() + 1
		t := c.run.now()
		if t >= u.end {
			break
		}
		slot := id % int64(len(u.sentAt))
		u.sentID[slot].Store(id)
		u.sentAt[slot].Store(t)
		u.buf = uplinkFrame(u.buf[:0], id, t, u.payload, u.pad)
		// Count it before writing: the ack may come back before the write returns.
		u.sent.Add(1)
		if err = c.conn.writeFrame(wsframe.OpText, u.buf); err != nil { // a close went first
			u.sent.Add(-1)
			break
		}
		held++
	}
	if uerr := c.conn.uncork(); uerr != nil {
		u.sent.Add(-held)
		err = uerr
	}
	if err != nil {
		u.sending = false
	}
	return err
}

// endCode is the close code that ended a connection DMB (or the network)
// closed: DMB's code, or 1006 when the connection just dropped.
func (c *client) endCode() int {
	if code := websocket.CloseStatus(c.endErr); code != -1 {
		return int(code)
	}
	return int(websocket.StatusAbnormalClosure)
}

// failureReason classifies a failed handshake for the report, with few
// distinct values.
func failureReason(err error) string {
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return "close " + strconv.Itoa(int(ce.Code))
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	msg := err.Error()
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}
