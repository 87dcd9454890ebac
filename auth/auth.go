// Package auth holds DMB's client tokens (docs/protocol.md, section 7): HS256
// JWTs signed with the secret that DMB and the backends share, carrying the
// user (sub), an expiry (exp) and optionally the services the user may
// connect to (svc). The node verifies them; backends mint them. Signing and
// verification are github.com/golang-jwt/jwt's; this package fixes the
// policy: HS256 only, exp and sub required, svc honoured.
package auth

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MinSecretLen is the shortest secret accepted: HS256 wants at least as
// many bytes of key as the hash has.
const MinSecretLen = 32

// Claims are the claims of a DMB token.
type Claims struct {
	jwt.RegisteredClaims
	// Services, when not empty, lists the services the token admits.
	Services []string `json:"svc,omitempty"`
}

// Reasons a token is refused; the close reason a client sees with 4001.
var (
	ErrMissing    = errors.New("token missing")
	ErrInvalid    = errors.New("token invalid")
	ErrExpired    = errors.New("token expired")
	ErrNoSubject  = errors.New("token has no sub")
	ErrWrongScope = errors.New("token not valid for this service")
)

// Verifier checks tokens against one secret.
type Verifier struct {
	secret []byte
	parser *jwt.Parser
}

// NewVerifier returns a verifier for secret.
func NewVerifier(secret string) (*Verifier, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("secret must be at least %d bytes", MinSecretLen)
	}
	return &Verifier{
		secret: []byte(secret),
		// Only HS256: a token naming "none", another HMAC or a public-key
		// algorithm is refused before its signature is looked at.
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(5*time.Second),
		),
	}, nil
}

// Verify checks token for a client of service and returns its user.
func (v *Verifier) Verify(token, service string) (string, error) {
	if token == "" {
		return "", ErrMissing
	}
	var c Claims
	_, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.secret, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "", ErrExpired
	case err != nil:
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	case c.Subject == "":
		return "", ErrNoSubject
	case len(c.Services) > 0 && !slices.Contains(c.Services, service):
		return "", ErrWrongScope
	}
	return c.Subject, nil
}

// Mint returns a token for user, valid for ttl, admitting the listed
// services (all services when none are listed).
func Mint(secret, user string, ttl time.Duration, services ...string) (string, error) {
	if len(secret) < MinSecretLen {
		return "", fmt.Errorf("secret must be at least %d bytes", MinSecretLen)
	}
	if user == "" || ttl <= 0 {
		return "", errors.New("a token needs a user and a positive lifetime")
	}
	now := time.Now()
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   user,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Services: services,
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
}
