package broker

import (
	"context"

	"github.com/dmb-broker/dmb/protocol"
)

// Hello is what a client asks for when it connects, whatever the
// transport: the token of section 7 and, to take up a session it lost,
// its session token and the offsets it reached (section 11).
type Hello struct {
	Token  string
	Resume string
	Offset string
}

// accept admits a client that a transport's handler opened as t, or
// closes it with the contract's code, and runs its session on a goroutine
// of its own: read reads the client's frames until the connection ends.
// inline is t's inline writer, when it has one, else nil.
//
// A client that asks to resume its session takes it up when it may (see
// resume.go), is closed with 1013 when the resume failed for now, and gets
// a fresh session otherwise.
func (b *Broker) accept(t Transport, inline InlineWriter, service, remote string, h Hello, read func(*session) (int, string)) {
	id, code, reason := b.admit(service, h.Token, remote)
	if code != 0 {
		b.refuse(t, service, remote, code, reason)
		return
	}
	s := newSession(b, t, inline, service, remote, id)
	var r *resumption
	ctx := b.ctx
	if h.Resume != "" && b.cfg.Resumes != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(b.ctx, resumeTimeout)
		defer cancel()
		var failed bool
		if r, failed = b.claimResume(ctx, service, id.user, h); failed {
			b.refuse(t, service, remote, protocol.CloseTryAgainLater, "resume failed: try again")
			return
		}
		if r != nil {
			b.restore(s, r)
		}
	}
	defer b.announcing(s.cid)() // s.cid is the session's for good now
	if r == nil {
		code, reason = b.add(s)
	} else if code, reason = b.splice(ctx, s, r); code != 0 {
		b.unclaim(ctx, r)
	}
	if code != 0 {
		b.refuse(t, service, remote, code, reason)
		return
	}
	s.announce()
	go func() {
		defer b.sessions.Done()
		s.run(func() (int, string) { return read(s) })
	}()
}

// announcing records that a session of cid is being added and announced,
// until the function it returns is called: from before its client can
// have its token (dmb:connected) until its client_connected is queued in
// the uplink. A resume of the session waits for it (untilAnnounced), and
// then for the uplink to settle, so that Redis knows the session when the
// resume claims it, however soon the client came back.
func (b *Broker) announcing(cid string) (done func()) {
	ch := make(chan struct{})
	b.adding.Store(cid, ch)
	return func() {
		b.adding.CompareAndDelete(cid, ch)
		close(ch)
	}
}

// untilAnnounced waits until no session of cid is being added and
// announced on this node, or ctx ends.
func (b *Broker) untilAnnounced(ctx context.Context, cid string) error {
	ch, ok := b.adding.Load(cid)
	if !ok {
		return nil
	}
	select {
	case <-ch.(chan struct{}):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
