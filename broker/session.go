package broker

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmb-broker/dmb/internal/ratelimit"
	"github.com/dmb-broker/dmb/internal/spread"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/uplink"
)

// session is one client's connection to the broker, whatever transport
// carries it: its identity, its send queue and writer, and what it does
// with the frames the client sends. The transport's handler reads and
// hands each frame to handle; the session writes only through its
// Transport.
//
// An idle session is kept small on purpose: one blocked goroutine (the
// handler's reader), no context, timer or logger of its own; what it logs
// carries its cid and service through log.
type session struct {
	b       *Broker
	cid     string
	service string
	remote  string
	user    string
	// rooms are the rooms the session is in (guarded by b.mu, see
	// rooms.go); roomPatterns those its token lets it join by itself.
	rooms        map[string]struct{}
	roomPatterns []string
	// addrKey is the key under which the session counts in
	// Broker.byAddr, "" when it does not.
	addrKey string

	// A fan-out reads inline and q of every session, whose memory is then
	// seldom in the cache: they sit together, q inline.
	inline  InlineWriter // t's, when it can write without waiting; else nil
	q       sendQueue
	t       Transport
	writers sync.WaitGroup // the running writer, if any

	// The reader's only: bad frames, and frames over the rate, in the
	// last minute; the rate's token bucket, and the one that paces the
	// connection's first second (see handle).
	errs, limited errorWindow
	rate, fresh   ratelimit.Bucket
	born          int64 // when the connection was made (UnixNano)

	// since is when the session began (Unix ms), before any resume;
	// resumed says this connection took it up, bound to resumeBKID when
	// that is live; superseded that another connection took it up since
	// (4010), so its backend is told nothing of this one's end.
	since      int64
	resumed    bool
	share      spread.Share // lengthens the write and frame timeouts (watchdog.go)
	resumeBKID string
	superseded atomic.Bool
	kicked     string // a resumed session: the reason of a kick it missed

	// fwdMu orders passing a frame to the uplink against stopForwarding,
	// so that no frame is passed on after the shutdown barrier. It is held
	// across the uplink's enqueue, which waits at most until the broker's
	// ctx ends (see Shutdown).
	fwdMu      sync.Mutex
	forwarding bool
}

// newSession makes the session of a client that the handler accepted on t;
// inline is t's inline writer, when it has one, else nil.
func newSession(b *Broker, t Transport, inline InlineWriter, service, remote string, id identity) *session {
	s := &session{
		b:            b,
		cid:          newCID(),
		service:      service,
		remote:       remote,
		user:         id.user,
		roomPatterns: id.rooms,
		born:         time.Now().UnixNano(),
		share:        spread.New(),
		since:        time.Now().UnixMilli(),
		t:            t,
		inline:       inline,
		forwarding:   true,
	}
	s.q.init(b.cfg.SendQueue, &b.queues, s.startWriter)
	return s
}

// CID, Service, Remote and User describe the client to the uplink.
func (s *session) CID() string     { return s.cid }
func (s *session) Service() string { return s.service }
func (s *session) Remote() string  { return s.remote }
func (s *session) User() string    { return s.user }

// Send queues a frame for the client; it is how the uplink answers.
func (s *session) Send(frame []byte) { s.send(frame) }

// log logs msg with the session's cid and service. The attributes are
// joined only when the level is on: a logger per session would cost every
// idle connection a few hundred bytes.
func (s *session) log(level slog.Level, msg string, args ...any) {
	ctx := context.Background()
	if s.b.log.Enabled(ctx, level) {
		s.b.log.With("cid", s.cid, "service", s.service).Log(ctx, level, msg, args...)
	}
}

// announce tells the backend of the session, which the broker just added:
// at once, before the client can use its token, so that a resume of it
// finds the session's line in Redis once the uplink settled it.
func (s *session) announce() {
	s.log(slog.LevelInfo, "client connected", "remote", s.remote, "resumed", s.resumed)
	connect := s.b.up.Connect
	if s.resumed {
		s.b.mu.RLock() // the downlink may change the rooms meanwhile
		rooms := slices.Sorted(maps.Keys(s.rooms))
		s.b.mu.RUnlock()
		connect = func(c uplink.Client) error { return s.b.up.Resume(c, s.resumeBKID, rooms) }
	}
	if err := connect(s); err != nil {
		s.log(slog.LevelWarn, "client_connected not queued", "err", err)
	}
}

// run serves the announced session: it lets read read the client's frames
// until the connection ends, and then ends the session and tells the
// backend why. read returns the close code and reason the client gave, or
// what ended the connection.
func (s *session) run(read func() (code int, reason string)) {
	code, reason := read()

	s.b.remove(s)
	s.q.stop()
	_ = s.t.CloseNow() // ends a writer that is still writing
	s.writers.Wait()
	if req := s.q.closeRequest(); req != nil {
		code, reason = req.code, req.reason
	}
	s.b.m.Disconnected(code)
	if s.superseded.Load() {
		// The session goes on on the connection that resumed it, which
		// told the backend.
		s.log(slog.LevelInfo, "client connection superseded: its session was resumed on another")
		if err := s.b.up.Drop(s); err != nil {
			s.log(slog.LevelWarn, "superseded client not dropped by the uplink", "err", err)
		}
		return
	}
	resumable := s.b.cfg.Resumes != nil && resumable(code)
	s.log(slog.LevelInfo, "client disconnected", "code", code, "reason", reason, "resumable", resumable)
	if err := s.b.up.Disconnect(s, code, reason, resumable); err != nil {
		s.log(slog.LevelWarn, "client_disconnected not queued", "err", err)
	}
}

// send queues a frame of the session's own; false when the session is
// closing or the frame overflowed the queue (the session is then closed as
// a slow consumer).
func (s *session) send(frame []byte) bool { return s.sendShared(frame, 1) }

// sendShared is send for a frame that sharers sessions share.
func (s *session) sendShared(frame []byte, sharers int) bool {
	r := s.q.push(frame, sharers)
	if r == pushed {
		return true
	}
	if why := overflowReason[r]; why != "" {
		s.b.m.Drops.WithLabelValues(why).Inc()
		s.log(slog.LevelInfo, "slow consumer: closing", "over", why)
	}
	return false
}

// overflowReason is the drop reason of each overflow.
var overflowReason = [...]string{
	overflow:      metrics.DropSlowConsumer,
	overflowBytes: metrics.DropSlowConsumerBytes,
	overBudget:    metrics.DropQueueBudget,
}

// closing tells whether the session is closing: what the client sends
// meanwhile is read (so that the close handshake ends) but not handled.
func (s *session) closing() bool { return s.q.closeRequest() != nil }

// close asks the writer to close the connection after what is queued, so
// that the client reads the error that led to the close.
func (s *session) close(code int, reason string) {
	s.q.close(closeReq{code: code, reason: reason, flush: true})
}

// handle passes one text frame from the client on. An error means that
// the node stopped passing frames on: the reader then ends the session,
// with 1001. A panic here is a bug in DMB; it costs this client its
// connection (1011), never the node.
func (s *session) handle(data []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log(slog.LevelError, "panic handling a client frame", "panic", p, "stack", string(debug.Stack()))
			s.close(protocol.CloseInternal, "internal error")
		}
	}()
	s.b.messagesIn.Inc()
	frame, err := protocol.DecodeClientFrame(data)
	if err != nil {
		s.badFrame(err)
		return nil
	}
	heavy := false
	if rate := s.b.cfg.ClientRate; rate > 0 {
		now := time.Now()
		young := now.UnixNano()-s.born < int64(youth)
		if young && !s.fresh.Allow(now, rate, freshBurst(s.b.cfg.ClientBurst)) {
			// In its first second a connection has a tenth of its burst at
			// once and is read at its rate after that: delayed, never
			// refused, since its bucket is full. A flooder that reconnects
			// for a fresh burst gets little from each connection.
			s.pace(s.fresh.Wait(rate))
			now = time.Now()
			s.fresh.Allow(now, rate, freshBurst(s.b.cfg.ClientBurst))
		}
		if !s.rate.Allow(now, rate, s.b.cfg.ClientBurst) {
			s.overRate(now, frame.ID)
			s.pace(s.rate.Wait(rate))
			return nil
		}
		// Heavy: over half its burst spent, or connected within the last
		// second, since a flooder that reconnects gets a fresh burst each
		// time, however little of it each connection spends.
		heavy = young || s.rate.Below(float64(s.b.cfg.ClientBurst)/2)
	}
	if frame.Event != protocol.EventMessage {
		return s.roomRequest(frame)
	}
	return s.forward(frame, heavy)
}

// overRate answers a frame sent faster than the client's rate, which is
// not passed on, and closes the client with 1008 when it goes on doing so:
// more than DMB_CLIENT_ERROR_LIMIT such frames in a minute.
func (s *session) overRate(now time.Time, id []byte) {
	s.b.m.Drops.WithLabelValues(metrics.DropRateLimited).Inc()
	s.send(protocol.AppendError(nil, id, protocol.ErrTextRateLimited))
	s.b.m.MessagesOut.WithLabelValues(metrics.KindError).Inc()
	if s.limited.add(now, s.b.cfg.ClientErrorLimit) {
		s.log(slog.LevelInfo, "rate limit exceeded: closing")
		s.close(protocol.ClosePolicy, "rate limit exceeded")
	}
}

// youth is how long a connection counts as new: its frames count as heavy
// (see uplink.Message), and are paced after freshBurst of them.
const youth = time.Second

// freshBurst is the frames a new connection may send at once: a tenth of
// its burst.
func freshBurst(burst int) int { return max(1, burst/10) }

// maxPace bounds how long pace holds a reader back, so that a client with
// a low rate still sees its connection end promptly.
const maxPace = 250 * time.Millisecond

// pace holds the reader back for d (at most maxPace), until the client's
// next token is due, after a frame over the rate or past a new
// connection's first tenth, unless the session is closing or the broker's
// lifetime ends: a client that sends faster than its rate then waits on
// its own socket, and its frames cost the node nothing until they may be
// passed on. Refused at full speed instead, a flooder makes the node read,
// decode and answer all it sends, and, closed within microseconds,
// reconnects for a fresh burst.
func (s *session) pace(d time.Duration) {
	if d <= 0 || s.closing() {
		return
	}
	t := time.NewTimer(min(d, maxPace))
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.b.ctx.Done():
	}
}

// refuseBinary closes the client with 1003: the protocol speaks JSON text
// only.
func (s *session) refuseBinary() {
	s.b.messagesIn.Inc()
	s.close(protocol.CloseUnsupported, "binary frames are not supported")
}

// badFrame answers a frame DMB refuses, and closes the client with 1008
// when it sends too many.
func (s *session) badFrame(err error) {
	s.b.m.Drops.WithLabelValues(metrics.DropClientError).Inc()
	var fe *protocol.FrameError
	var id []byte
	if errors.As(err, &fe) {
		id = fe.ID
	}
	s.send(protocol.AppendError(nil, id, err.Error()))
	s.b.m.MessagesOut.WithLabelValues(metrics.KindError).Inc()
	if s.errs.add(time.Now(), s.b.cfg.ClientErrorLimit) {
		s.close(protocol.ClosePolicy, "too many bad frames")
	}
}

// forward passes a frame to the uplink unless forwarding stopped; heavy
// when the client has spent more than half its burst or is new (see
// uplink.Message).
func (s *session) forward(frame protocol.ClientFrame, heavy bool) error {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if !s.forwarding {
		s.b.m.Drops.WithLabelValues(metrics.DropShuttingDown).Inc()
		if frame.ID != nil {
			s.send(protocol.AppendError(nil, frame.ID, protocol.ErrTextBrokerUnavailable))
		}
		return nil
	}
	// A full uplink queue holds the reader back until the broker's
	// lifetime ends: the session itself ends only when its reader returns.
	return s.b.up.Message(s.b.ctx, s, frame.Data, frame.ID, heavy)
}

// stopForwarding makes the session answer what the client sends from now
// on with "broker unavailable" instead of passing it on: the node is going
// away, and the client sends it again to the node it reconnects to. It
// waits for a frame being passed on, which waits at most until the
// broker's ctx ends.
func (s *session) stopForwarding() {
	s.fwdMu.Lock()
	s.forwarding = false
	s.fwdMu.Unlock()
}

// errorWindow counts a session's bad frames over the last minute. It is
// used by the session's reader only.
type errorWindow struct {
	times []time.Time
}

// add records a bad frame at now and reports whether the client has now
// sent more than limit in a minute.
func (w *errorWindow) add(now time.Time, limit int) bool {
	cut := 0
	for cut < len(w.times) && now.Sub(w.times[cut]) >= time.Minute {
		cut++
	}
	w.times = append(w.times[:0], w.times[cut:]...)
	w.times = append(w.times, now)
	return len(w.times) > limit
}
