package broker

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
func (b *Broker) accept(t Transport, inline InlineWriter, service, remote string, h Hello, read func(*session) (int, string)) {
	id, code, reason := b.admit(service, h.Token, remote)
	if code != 0 {
		b.refuse(t, service, remote, code, reason)
		return
	}
	s := newSession(b, t, inline, service, remote, id)
	if code, reason := b.add(s); code != 0 {
		b.refuse(t, service, remote, code, reason)
		return
	}
	go func() {
		defer b.sessions.Done()
		s.run(func() (int, string) { return read(s) })
	}()
}
