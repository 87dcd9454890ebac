package broker

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/resume"
)

// Sessions that survive a reconnect (docs/protocol.md, section 11).
//
// Every dmb:connected carries a session token, signed again whenever the
// client's rooms change. A client that comes back with ?resume= takes up
// its session: the token is verified and its one resume claimed in Redis
// (package resume), which has the node that may still hold an older
// connection close it (4010), and the histories are read for what the client
// missed. The new session is then spliced in on the downlink's worker,
// between two messages: dmb:connected, the missed messages in order, and
// the session joins the index, so that the next message handed out
// reaches it live. What was handed out since the histories were read
// comes from the downlink's recent messages (resume.View.Since); only when
// the downlink no longer holds them all is the splice abandoned and the
// histories read again from where they ended. A message that was read but
// is still queued live is kept from the session (resume.View.Skip). A resume that
// is refused (a token that is not valid here, or used, or past the window)
// is a fresh session: the client learns it from "resumed":false. A resume
// that fails for a passing reason (Redis did not answer in time, or
// answered an error) is closed with 1013 instead, its token's resume
// given back: the client connects again with it, as after any close it
// may retry, and takes up its session then.

// Resumes is the Redis side of resumes (resume.Manager).
type Resumes interface {
	Sign(c resume.Claims) string
	Verify(token string) (resume.Claims, bool)
	Claim(ctx context.Context, c resume.Claims) (resume.Claimed, error)
	Unclaim(ctx context.Context, c resume.Claims, cl resume.Claimed) error
	Release(ctx context.Context, c resume.Claims, cl resume.Claimed) error
	Read(ctx context.Context, c resume.Claims, offsets string, after map[string]history.ID) (resume.Missed, error)
}

// resumeTimeout bounds the Redis work of one resume.
const resumeTimeout = 5 * time.Second

// spliceAttempts bounds how often a resume reads the histories again
// because messages kept coming while it read them.
const spliceAttempts = 5

// resumption is a resume that was claimed: the session's claims and what
// its client missed.
type resumption struct {
	claims  resume.Claims
	claimed resume.Claimed
	bkid    string // the backend the session had
	missed  resume.Missed
}

// claimResume verifies a resume's token for a client of service that the
// auth token (if any) says is user, claims the session, reads what the
// client missed, and then takes the session from the node that may still
// hold an older connection of it. It returns nil when the client is to
// get a fresh session, and failed when the resume could not be done now:
// the token keeps its resume, and the client is to try again.
func (b *Broker) claimResume(ctx context.Context, service, user string, h Hello) (r *resumption, failed bool) {
	res := b.cfg.Resumes
	c, ok := res.Verify(h.Resume)
	if !ok || c.Service != service || c.User != user {
		b.m.Resumes.WithLabelValues(metrics.ResumeRefused).Inc()
		return nil, false
	}
	log := b.log.With("cid", c.CID, "service", service)
	tryAgain := func(err error) (*resumption, bool) {
		b.m.Resumes.WithLabelValues(metrics.ResumeFailed).Inc()
		log.Warn("resume failed: the client is to try again", "err", err)
		return nil, true
	}
	// A session that began or ended here a moment ago may not be in Redis
	// yet.
	err := b.untilAnnounced(ctx, c.CID)
	if err == nil {
		err = b.up.Settle(ctx, c.CID)
	}
	if err != nil {
		return tryAgain(err)
	}
	cl, err := res.Claim(ctx, c)
	switch {
	case err != nil:
		// Not given back: a claim that failed may have found the token
		// used already, and a replayed token must stay refused. A claim
		// that was made all the same refuses the try again.
		return tryAgain(err)
	case !cl.OK:
		b.m.Resumes.WithLabelValues(metrics.ResumeRefused).Inc()
		log.Debug("resume refused: used, or past the window")
		return nil, false
	}
	missed, err := res.Read(ctx, c, h.Offset, nil)
	if err == nil {
		err = res.Release(ctx, c, cl)
	}
	if err != nil {
		// The token's resume is given back before the client is told to
		// try again.
		b.unclaim(ctx, &resumption{claims: c, claimed: cl})
		return tryAgain(err)
	}
	return &resumption{claims: c, claimed: cl, bkid: cl.BKID, missed: missed}, false
}

// unclaim gives a resume that failed after its claim back its token's
// resume and its session's mark, so that the client resumes again, here
// or elsewhere. It runs when ctx has ended too, within resumeTimeout.
func (b *Broker) unclaim(ctx context.Context, r *resumption) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
	defer cancel()
	if err := b.cfg.Resumes.Unclaim(ctx, r.claims, r.claimed); err != nil {
		b.log.Warn("resume's claim not undone", "cid", r.claims.CID, "err", err)
	}
}

// restore gives s, a new session, the cid, start and rooms of the
// session r resumes.
func (b *Broker) restore(s *session, r *resumption) {
	s.cid, s.since, s.resumed, s.resumeBKID = r.claims.CID, r.claims.Born, true, r.bkid
	for _, room := range r.claims.Rooms {
		if protocol.ValidRoom(room) && len(s.rooms) < b.maxClientRooms() {
			if s.rooms == nil {
				s.rooms = make(map[string]struct{})
			}
			s.rooms[room] = struct{}{}
		}
	}
}

// splice adds the resumed session s to the broker, after the frames of
// what its client missed (see the top of this file); the close code and
// reason that refuse it, as add's.
func (b *Broker) splice(ctx context.Context, s *session, r *resumption) (int, string) {
	frames := s.replay(r.missed.Entries, true)
	recovered := r.missed.Recovered
	tails := r.missed.Tails
	for attempt := 0; ; attempt++ {
		// The last attempt takes what it has, and says whether that is
		// all.
		last := attempt == spliceAttempts-1
		var code int
		var reason string
		gap := false
		err := b.cfg.Splice(ctx, func(v resume.View) {
			// What was handed out since the histories were read, from
			// the downlink's recent messages, when it still holds them.
			var since []resume.Entry
			upTo := make(map[string]history.ID, len(tails))
			for bkid, tail := range tails {
				upTo[bkid] = tail
				last, ok := v.Last(bkid)
				if !ok || !tail.Less(last) {
					continue
				}
				got, ok := v.Since(bkid, tail)
				if !ok {
					gap = true
					continue
				}
				for _, e := range got {
					since = append(since, resume.Entry{BKID: bkid, Entry: e})
				}
				upTo[bkid] = last
			}
			if gap && !last {
				return
			}
			resume.Merge(since)
			all, fits := b.fitQueue(append(frames, s.replay(since, false)...))
			recovered = recovered && !gap && fits
			code, reason = b.addSession(s, all, recovered)
			if code == 0 {
				for bkid, id := range upTo {
					v.Skip(bkid, s.cid, id)
				}
				b.m.Recovered.Add(float64(len(all)))
			}
		})
		switch {
		case err != nil:
			return protocol.CloseGoingAway, "server shutting down"
		case !gap || last:
			if code == 0 {
				result := metrics.ResumeRecovered
				if !recovered {
					result = metrics.ResumeGap
				}
				b.m.Resumes.WithLabelValues(result).Inc()
				s.log(slog.LevelInfo, "session resumed", "recovered", recovered)
				if s.kicked != "" {
					s.close(protocol.CloseKicked, s.kicked)
				}
			}
			return code, reason
		}
		more, err := b.cfg.Resumes.Read(ctx, r.claims, "", tails)
		if err != nil {
			s.log(slog.LevelWarn, "histories not read again: the session goes on without what came since", "err", err)
			recovered = false
			continue
		}
		frames = append(frames, s.replay(more.Entries, false)...)
		tails = more.Tails
	}
}

// fitQueue returns the newest of frames that a session's queue holds with
// room to spare, and whether that is all of them: a client that missed
// more than its queue holds gets what it can, and is told it missed some.
func (b *Broker) fitQueue(frames [][]byte) ([][]byte, bool) {
	maxFrames, maxBytes := b.cfg.SendQueue/2, b.queues.perSession/2
	n, size := 0, 0
	for i := len(frames) - 1; i >= 0; i-- {
		if n+1 > maxFrames || size+len(frames[i]) > maxBytes {
			return frames[i+1:], false
		}
		n++
		size += len(frames[i])
	}
	return frames, true
}

// replay returns the frames of the missed messages meant for s, a
// session not yet in the index: broadcasts, its rooms', directs to its
// cid or user, and its joins and leaves, which change its rooms as they
// come; a kick of it is kept for when it is added. first says these are
// the first it missed: its token's rooms are those after them, so a room
// whose first change among them is a join of it was not its before.
func (s *session) replay(entries []resume.Entry, first bool) [][]byte {
	if first {
		s.roomsBefore(entries)
	}
	var frames [][]byte
	for _, e := range entries {
		cmd, err := protocol.DecodeCommand(e.Payload)
		if err != nil {
			continue // the function stored it; a payload DMB drops is dropped here too
		}
		mine := cmd.CID == s.cid || cmd.CID == "" && cmd.User != "" && cmd.User == s.user
		offset := func(frame []byte) []byte { return protocol.WithOffset(frame, e.BKID, e.ID.String()) }
		switch cmd.Type {
		case protocol.TypeBroadcast:
			if !slices.Contains(cmd.Except, s.cid) {
				frames = append(frames, offset(protocol.AppendBroadcast(nil, cmd.Data)))
			}
		case protocol.TypeRoom:
			if _, in := s.rooms[cmd.Room]; in && !slices.Contains(cmd.Except, s.cid) {
				frames = append(frames, offset(protocol.AppendRoom(nil, cmd.Room, cmd.Data)))
			}
		case protocol.TypeDirect:
			if mine {
				frames = append(frames, offset(protocol.AppendDirect(nil, cmd.Data, cmd.ReplyTo, cmd.More)))
			}
		case protocol.TypeJoin:
			if _, in := s.rooms[cmd.Room]; mine && !in && len(s.rooms) < s.b.maxClientRooms() {
				if s.rooms == nil {
					s.rooms = make(map[string]struct{})
				}
				s.rooms[cmd.Room] = struct{}{}
				frames = append(frames, protocol.AppendMembership(nil, true, cmd.Room))
			}
		case protocol.TypeLeave:
			if _, in := s.rooms[cmd.Room]; mine && in {
				delete(s.rooms, cmd.Room)
				frames = append(frames, protocol.AppendMembership(nil, false, cmd.Room))
			}
		case protocol.TypeKick:
			if cmd.CID == s.cid {
				s.kicked = cmd.Reason
			}
		}
	}
	return frames
}

// roomsBefore sets the rooms of s to those it was in before entries: a
// room whose first change of it among them is a join was not its, one
// whose first is a leave was. Else a room message published before it
// joined would reach it.
func (s *session) roomsBefore(entries []resume.Entry) {
	seen := map[string]bool{}
	for _, e := range entries {
		cmd, err := protocol.DecodeCommand(e.Payload)
		if err != nil || cmd.Type != protocol.TypeJoin && cmd.Type != protocol.TypeLeave || seen[cmd.Room] {
			continue
		}
		if !(cmd.CID == s.cid || cmd.CID == "" && cmd.User != "" && cmd.User == s.user) {
			continue
		}
		seen[cmd.Room] = true
		if cmd.Type == protocol.TypeJoin {
			delete(s.rooms, cmd.Room)
		} else if len(s.rooms) < s.b.maxClientRooms() {
			if s.rooms == nil {
				s.rooms = make(map[string]struct{})
			}
			s.rooms[cmd.Room] = struct{}{}
		}
	}
}

// Resumed closes the connection of cid with 4010: its session was
// resumed on another, which told the backend.
func (b *Broker) Resumed(service, cid string) int {
	s := b.lookup(service, cid)
	if s == nil {
		return 0
	}
	b.supersede(s)
	return 1
}

// supersede closes s, whose session another connection took up: with
// 4010, or at once when it is closing already (its client has gone to
// resume elsewhere, and its close handshake would hold up the resume,
// which waits for this node to let the session go).
func (b *Broker) supersede(s *session) {
	s.superseded.Store(true)
	if s.closing() {
		// Not under b.mu or on the downlink's worker: closing a TLS
		// connection may wait to send its last record.
		go func() { _ = s.t.CloseNow() }()
		return
	}
	s.q.close(closeReq{code: protocol.CloseResumed, reason: protocol.ReasonResumed})
}

// token signs the session token of s: "" without resumes.
func (s *session) token() string {
	res := s.b.cfg.Resumes
	if res == nil {
		return ""
	}
	return res.Sign(resume.Claims{
		CID: s.cid, Service: s.service, User: s.user, Born: s.since,
		Rooms: slices.Sorted(maps.Keys(s.rooms)),
	})
}

// sendToken sends the client its session token again, after its rooms
// changed.
func (s *session) sendToken() {
	if t := s.token(); t != "" {
		s.send(protocol.AppendSession(nil, t))
		s.b.m.MessagesOut.WithLabelValues(metrics.KindSession).Inc()
	}
}

// resumable tells whether a session that ended with code may be resumed:
// not when the client closed it itself (1000), was kicked or refused,
// or was closed for what it sent.
func resumable(code int) bool {
	switch code {
	case protocol.CloseNormal, protocol.CloseUnsupported, protocol.ClosePolicy, protocol.CloseTooBig,
		protocol.CloseUnauthorized, protocol.CloseUnknownSvc, protocol.CloseKicked, protocol.CloseResumed:
		return false
	}
	return true
}
