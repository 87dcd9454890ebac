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
	// Rooms, when not empty, lists patterns (path.Match) of the rooms the
	// client may join and leave by itself.
	Rooms []string `json:"rooms,omitempty"`
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
	c, err := v.VerifyClaims(token, service)
	return c.Subject, err
}

// VerifyClaims is Verify that returns the token's claims.
func (v *Verifier) VerifyClaims(token, service string) (Claims, error) {
	if token == "" {
		return Claims{}, ErrMissing
	}
	var c Claims
	_, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.secret, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, ErrExpired
	case err != nil:
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	case c.Subject == "":
		return Claims{}, ErrNoSubject
	case len(c.Services) > 0 && !slices.Contains(c.Services, service):
		return Claims{}, ErrWrongScope
	}
	return c, nil
}

// Mint returns a token for user, valid for ttl, admitting the listed
// services (all services when none are listed).
func Mint(secret, user string, ttl time.Duration, services ...string) (string, error) {
	return MintRooms(secret, user, ttl, nil, services...)
}

// MintRooms is Mint for a token that lets the client join and leave by
// itself the rooms that match one of the patterns rooms.
func MintRooms(secret, user string, ttl time.Duration, rooms []string, services ...string) (string, error) {
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
		Rooms:    rooms,
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
}
