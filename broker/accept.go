package broker

import "context"

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
// resume.go), and gets a fresh one otherwise.
func (b *Broker) accept(t Transport, inline InlineWriter, service, remote string, h Hello, read func(*session) (int, string)) {
	id, code, reason := b.admit(service, h.Token, remote)
	if code != 0 {
		b.refuse(t, service, remote, code, reason)
		return
	}
	s := newSession(b, t, inline, service, remote, id)
	var r *resumption
	if h.Resume != "" && b.cfg.Resumes != nil {
		ctx, cancel := context.WithTimeout(b.ctx, resumeTimeout)
		defer cancel()
		if r = b.claimResume(ctx, service, id.user, h); r != nil {
			b.restore(s, r)
			if code, reason = b.splice(ctx, s, r); code != 0 {
				b.unclaim(ctx, r)
			}
		}
	}
	if r == nil {
		code, reason = b.add(s)
	}
	if code != 0 {
		b.refuse(t, service, remote, code, reason)
		return
	}
	go func() {
		defer b.sessions.Done()
		s.run(func() (int, string) { return read(s) })
	}()
}
