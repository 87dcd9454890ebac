package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const secret = "0123456789abcdef0123456789abcdef"

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(sub string, exp time.Duration, svc ...string) Claims {
	c := Claims{RegisteredClaims: jwt.RegisteredClaims{Subject: sub}, Services: svc}
	if exp != 0 {
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(exp))
	}
	return c
}

func TestAMintedTokenAdmitsItsUserToItsServices(t *testing.T) {
	v, err := NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Mint(secret, "alice", time.Minute, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if user, err := v.Verify(tok, "chat"); err != nil || user != "alice" {
		t.Fatalf("Verify = %q, %v", user, err)
	}
	if _, err := v.Verify(tok, "games"); !errors.Is(err, ErrWrongScope) {
		t.Fatalf("other service: %v", err)
	}
	all, _ := Mint(secret, "bob", time.Minute)
	if user, err := v.Verify(all, "games"); err != nil || user != "bob" {
		t.Fatalf("token without svc: %q, %v", user, err)
	}
}

func TestTokensThatAreRefused(t *testing.T) {
	v, _ := NewVerifier(secret)
	good := claims("alice", time.Minute)
	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"missing", "", ErrMissing},
		{"malformed", "not.a.jwt", ErrInvalid},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), good), ErrInvalid},
		{"expired", sign(t, jwt.SigningMethodHS256, []byte(secret), claims("alice", -time.Minute)), ErrExpired},
		{"no exp", sign(t, jwt.SigningMethodHS256, []byte(secret), claims("alice", 0)), ErrInvalid},
		{"no sub", sign(t, jwt.SigningMethodHS256, []byte(secret), claims("", time.Minute)), ErrNoSubject},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good), ErrInvalid},
		{"alg HS512", sign(t, jwt.SigningMethodHS512, []byte(secret), good), ErrInvalid},
		{"wrong service", sign(t, jwt.SigningMethodHS256, []byte(secret), claims("alice", time.Minute, "games")), ErrWrongScope},
	}
	for _, tc := range cases {
		if _, err := v.Verify(tc.token, "chat"); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestShortSecretsAreRefused(t *testing.T) {
	if _, err := NewVerifier("short"); err == nil {
		t.Fatal("short secret accepted")
	}
	if _, err := Mint("short", "alice", time.Minute); err == nil {
		t.Fatal("minted with a short secret")
	}
}

func FuzzVerify(f *testing.F) {
	tok, _ := Mint(secret, "alice", time.Hour, "chat")
	for _, s := range []string{tok, "", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", tok + "x"} {
		f.Add(s)
	}
	v, _ := NewVerifier(secret)
	f.Fuzz(func(t *testing.T, token string) {
		user, err := v.Verify(token, "chat")
		if err == nil && user == "" {
			t.Fatalf("token %q admitted without a user", token)
		}
	})
}
