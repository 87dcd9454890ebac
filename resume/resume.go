// Package resume holds what lets a client take up its session after a
// reconnect (docs/protocol.md, section 11): the signed session token, the
// secret every node signs with, and the marks in Redis that say a
// session may still be resumed.
//
// A token carries what a resume needs (cid, service, user, rooms,
// backend, when the session began), so a node's crash loses none of it. A
// session may be resumed while it is still open somewhere (its node's
// client table names it) or within the resume window after it ended: a
// node that ends a resumable session, or reports the clients of a dead
// node, marks it, {dmb}:resume:{cid}, for the window. Each token resumes
// once: a resume takes {dmb}:resumed:{jti}.
package resume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/protocol"
)

// Claims are what a session token says.
type Claims struct {
	jwt.RegisteredClaims        // ID (jti) makes each token one of a kind
	CID                  string `json:"cid"`
	Service              string `json:"svc"`
	User                 string `json:"usr,omitempty"`
	// Rooms are the client's rooms when the token was made.
	Rooms []string `json:"rooms,omitempty"`
	// BKID is the backend the client was bound to.
	BKID string `json:"bk,omitempty"`
	// Born is when the session began (Unix milliseconds, the node's
	// clock): a resume recovers the histories the client has no offset of
	// from then on.
	Born int64 `json:"born"`
}

// ErrInvalid is a token that is not one of DMB's: forged, truncated,
// signed with another secret, or not a session token.
var ErrInvalid = errors.New("session token invalid")

// Tokens signs and verifies session tokens with one secret.
type Tokens struct {
	secret []byte
	parser *jwt.Parser
}

// MinSecretLen is the shortest secret accepted.
const MinSecretLen = 32

// NewTokens returns Tokens for secret.
func NewTokens(secret []byte) (*Tokens, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("session secret must be at least %d bytes", MinSecretLen)
	}
	return &Tokens{
		secret: secret,
		parser: jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()})),
	}, nil
}

// Sign returns a token for c, with a fresh jti.
func (t *Tokens) Sign(c Claims) (string, error) {
	var id [12]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	c.ID = hex.EncodeToString(id[:])
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.secret)
	if err != nil {
		return "", fmt.Errorf("sign a session token: %w", err)
	}
	return s, nil
}

// Verify returns what token says, or ErrInvalid.
func (t *Tokens) Verify(token string) (Claims, error) {
	var c Claims
	if _, err := t.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return t.secret, nil }); err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.ID == "" || c.CID == "" || !protocol.ValidService(c.Service) || c.BKID != "" && !protocol.ValidBKID(c.BKID) {
		return Claims{}, ErrInvalid
	}
	return c, nil
}

// Secret returns the secret kept in Redis under key, making it first when
// no node has: every node that shares the Redis signs with it. A node
// that finds the key gone (Redis lost its data) puts its own back with
// Keep.
func Secret(ctx context.Context, rdb redis.UniversalClient, key string) ([]byte, error) {
	var b [32]byte
	_, _ = rand.Read(b[:])
	if err := Keep(ctx, rdb, key, []byte(hex.EncodeToString(b[:]))); err != nil {
		return nil, err
	}
	s, err := rdb.Get(ctx, key).Bytes()
	if err != nil {
		return nil, fmt.Errorf("read the session secret: %w", err)
	}
	return s, nil
}

// Keep puts secret under key unless a secret is there already.
func Keep(ctx context.Context, rdb redis.UniversalClient, key string, secret []byte) error {
	if err := rdb.SetNX(ctx, key, secret, 0).Err(); err != nil {
		return fmt.Errorf("keep the session secret: %w", err)
	}
	return nil
}

// Keys names the marks under the registry's hash tag.
type Keys struct{ ch protocol.Channels }

// NewKeys returns the key names under ch's prefix.
func NewKeys(ch protocol.Channels) Keys { return Keys{ch} }

// Secret is the key of the secret kept in Redis.
func (k Keys) Secret() string { return k.ch.Key("session-secret") }

// Ended is the mark of a session that ended and may be resumed.
func (k Keys) Ended(cid string) string { return k.ch.Key("resume", cid) }

// Used is the mark of a token that resumed a session.
func (k Keys) Used(jti string) string { return k.ch.Key("resumed", jti) }

// Holder finds the node whose client table names cid: its table's key
// and the bkid there, or "" when no node's does.
type Holder func(ctx context.Context, cid string) (table, bkid string, err error)

// Claim decides whether the session of c may be resumed now, and takes
// the token's one resume when it may: the session is open somewhere, or
// ended within window. It returns where the session is still open, if
// it is (holder's table and bkid), so that its older connection can be
// closed.
func Claim(ctx context.Context, rdb redis.UniversalClient, k Keys, holder Holder, c Claims, window time.Duration) (ok bool, table, bkid string, marked bool, err error) {
	table, bkid, err = holder(ctx, c.CID)
	if err != nil {
		return false, "", "", false, err
	}
	pipe := rdb.Pipeline()
	ended := pipe.Get(ctx, k.Ended(c.CID)) // the bkid the session had
	first := pipe.SetNX(ctx, k.Used(c.ID), 1, 2*window)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, "", "", false, fmt.Errorf("claim session %s: %w", c.CID, err)
	}
	endedBKID, endedErr := ended.Result()
	marked = endedErr == nil
	if !first.Val() || table == "" && !marked {
		return false, "", "", false, nil
	}
	if table == "" {
		bkid = endedBKID
	}
	if marked {
		// The mark has done its work: a session that ends again is marked
		// again when it may be resumed, and is not when it may not (a
		// kick). Unclaim puts it back.
		if err := rdb.Del(ctx, k.Ended(c.CID)).Err(); err != nil {
			return false, "", "", false, fmt.Errorf("claim session %s: %w", c.CID, err)
		}
	}
	return true, table, bkid, marked, nil
}

// Unclaim undoes Claim for a resume that failed: the token gets its
// resume back, and the session its mark (with bkid) when it had one.
func Unclaim(ctx context.Context, rdb redis.UniversalClient, k Keys, c Claims, marked bool, bkid string, window time.Duration) error {
	pipe := rdb.Pipeline()
	pipe.Del(ctx, k.Used(c.ID))
	if marked {
		pipe.Set(ctx, k.Ended(c.CID), bkid, window)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("unclaim session %s: %w", c.CID, err)
	}
	return nil
}

// View is what a resume sees of the downlink at the moment it splices a
// session in: the downlink hands messages to sessions one at a time, and
// the splice runs between two of them.
type View interface {
	// Last is the position of the last recoverable message of bkid that
	// the downlink handed out, if any.
	Last(bkid string) (history.ID, bool)
	// Skip keeps messages of bkid up to upTo from cid: the resume gave it
	// them from history, and they may still be on their way live.
	Skip(bkid, cid string, upTo history.ID)
	// Since returns the recoverable messages of bkid handed out after
	// after, in order; false when the downlink no longer holds them all.
	Since(bkid string, after history.ID) ([]history.Entry, bool)
}
