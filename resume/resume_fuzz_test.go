package resume_test

import (
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/resume"
)

var secret = []byte(strings.Repeat("s", resume.MinSecretLen))

// FuzzVerify reads what a client sends as ?resume=: only a token signed
// with the secret is accepted, and what it says is a session's.
func FuzzVerify(f *testing.F) {
	tokens, err := resume.NewTokens(secret)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := tokens.Sign(resume.Claims{CID: "c1", Service: "chat", User: "alice", Rooms: []string{"lobby"}, Born: 1})
	other, _ := resume.NewTokens([]byte(strings.Repeat("o", resume.MinSecretLen)))
	foreign, _ := other.Sign(resume.Claims{CID: "c1", Service: "chat"})
	parts := strings.Split(good, ".")
	for _, seed := range []string{
		good, foreign, good[:len(good)-3], parts[0] + "." + parts[1] + ".", "", "a.b.c", "...",
		"eyJhbGciOiJub25lIn0." + parts[1] + ".",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := tokens.Verify(token)
		if err != nil {
			return
		}
		if token != good {
			// Anything else that verifies must be signed with the secret:
			// it says what a session says, and signs again as valid.
			if c.CID == "" || !protocol.ValidService(c.Service) {
				t.Fatalf("verified %q with claims %+v", token, c)
			}
		}
		again, err := tokens.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tokens.Verify(again); err != nil {
			t.Fatalf("claims %+v sign again as invalid: %v", c, err)
		}
	})
}

func TestATokenVerifiesOnlyWithItsSecret(t *testing.T) {
	tokens, _ := resume.NewTokens(secret)
	tok, err := tokens.Sign(resume.Claims{CID: "c1", Service: "chat", User: "alice", Rooms: []string{"a", "b"}, Born: 7})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tokens.Verify(tok)
	if err != nil || c.CID != "c1" || c.Service != "chat" || c.User != "alice" || len(c.Rooms) != 2 || c.Born != 7 || c.ID == "" {
		t.Fatalf("claims %+v, %v", c, err)
	}
	other, _ := resume.NewTokens([]byte(strings.Repeat("o", resume.MinSecretLen)))
	if _, err := other.Verify(tok); err == nil {
		t.Fatal("a token verified with another secret")
	}
	if _, err := resume.NewTokens([]byte("short")); err == nil {
		t.Fatal("a short secret was accepted")
	}
}
