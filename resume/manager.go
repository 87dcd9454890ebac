package resume

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// Registry is what a resume needs of the backend registry.
type Registry interface {
	ServiceOf(ctx context.Context, bkid string) (string, bool, error)
	BKIDs(service string) []string
}

// Config describes a Manager.
type Config struct {
	Channels protocol.Channels
	NodeID   string
	// Secret signs tokens; when empty, one kept in Redis is used (Run
	// reads it).
	Secret  string
	Window  time.Duration // DMB_RESUME_WINDOW
	History history.Config
	Logger  *slog.Logger
	// Holder finds the node whose client table names a cid; Own returns
	// this node's table's key.
	Holder Holder
	Own    func() string
}

// Manager is the Redis side of resumes: it signs and verifies tokens,
// claims resumes, and reads what a resumed client missed.
type Manager struct {
	cfg     Config
	rdb     redis.UniversalClient
	reg     Registry
	keys    Keys
	sharded bool
	tokens  atomic.Pointer[Tokens] // nil until the secret is known
}

// NewManager returns a manager; with DMB_SESSION_SECRET it signs at once,
// else from when Run has read the secret kept in Redis.
func NewManager(rdb redis.UniversalClient, reg Registry, cfg Config) (*Manager, error) {
	m := &Manager{cfg: cfg, rdb: rdb, reg: reg, keys: NewKeys(cfg.Channels), sharded: pubsub.Sharded(rdb)}
	if cfg.Secret != "" {
		t, err := NewTokens([]byte(cfg.Secret))
		if err != nil {
			return nil, err
		}
		m.tokens.Store(t)
	}
	return m, nil
}

// Keys returns the names of the marks.
func (m *Manager) Keys() Keys { return m.keys }

// Window is DMB_RESUME_WINDOW.
func (m *Manager) Window() time.Duration { return m.cfg.Window }

// Ready tells whether tokens can be signed.
func (m *Manager) Ready() bool { return m.tokens.Load() != nil }

// Up is called whenever the node's Redis connection is up again: it
// loads the history function (a Redis that restarted without its data
// lost it) and reads the secret kept in Redis, or puts this node's back.
func (m *Manager) Up(ctx context.Context) {
	if err := history.Load(ctx, m.rdb, m.cfg.History); err != nil {
		m.cfg.Logger.Warn("history function not loaded: recoverable publishes fail until it is", "err", err)
	}
	if m.cfg.Secret != "" {
		return
	}
	if t := m.tokens.Load(); t != nil {
		if err := Keep(ctx, m.rdb, m.keys.Secret(), t.secret); err != nil {
			m.cfg.Logger.Warn("session secret not kept in Redis", "err", err)
		}
		return
	}
	secret, err := Secret(ctx, m.rdb, m.keys.Secret())
	if err != nil {
		m.cfg.Logger.Warn("session secret not read: sessions cannot be resumed until it is", "err", err)
		return
	}
	t, err := NewTokens(secret)
	if err != nil {
		m.cfg.Logger.Error("the session secret kept in Redis is too short", "err", err)
		return
	}
	m.tokens.Store(t)
}

// Sign returns a token for c; "" when no secret is known yet.
func (m *Manager) Sign(c Claims) string {
	t := m.tokens.Load()
	if t == nil {
		return ""
	}
	s, err := t.Sign(c)
	if err != nil {
		m.cfg.Logger.Error("session token not signed", "cid", c.CID, "err", err)
		return ""
	}
	return s
}

// Verify returns what token says, if it is one of DMB's.
func (m *Manager) Verify(token string) (Claims, bool) {
	t := m.tokens.Load()
	if t == nil {
		return Claims{}, false
	}
	c, err := t.Verify(token)
	return c, err == nil
}

// Claimed is a session whose resume a token took: where the session is
// still open, if anywhere (a node's client table), and its backend.
type Claimed struct {
	OK     bool
	table  string
	BKID   string
	marked bool // the session's end was marked
}

// Claim decides whether the session of c may be resumed now, taking the
// token's one resume (see Claim).
func (m *Manager) Claim(ctx context.Context, c Claims) (Claimed, error) {
	ok, table, bkid, marked, err := Claim(ctx, m.rdb, m.keys, m.cfg.Holder, c, m.cfg.Window)
	if err != nil || !ok {
		return Claimed{}, err
	}
	return Claimed{OK: true, table: table, BKID: bkid, marked: marked}, nil
}

// Unclaim undoes Claim for a resume that failed (see Unclaim).
func (m *Manager) Unclaim(ctx context.Context, c Claims, cl Claimed) error {
	return Unclaim(ctx, m.rdb, m.keys, c, cl.marked, cl.BKID, m.cfg.Window)
}

// Release takes the session of c from the node that still holds it, if
// another does: that node is told to close its connection (4010, without
// telling the backend), and Release waits until the line is gone from
// its client table: the node took it out after closing the connection,
// or after it told the backend that the connection ended, so that the
// backend hears of the resume after that, never before. A line that
// stays (its node is dead, or cut off) is taken out after releaseWait, so
// that the dead node's report does not tell the backend the client left;
// unless a survivor is reporting that node's clients already: Release
// then waits for it to report this one too. A line in this node's own
// table is the broker's (see Broker.addSession).
func (m *Manager) Release(ctx context.Context, c Claims, cl Claimed) error {
	table := cl.table
	if table == "" || table == m.cfg.Own() {
		return nil
	}
	if err := m.supersede(ctx, cl.BKID, c.CID); err != nil {
		return err
	}
	wait := time.NewTimer(releaseWait)
	defer wait.Stop()
	tick := time.NewTicker(releasePoll)
	defer tick.Stop()
	for {
		held, err := m.rdb.HExists(ctx, table, c.CID).Result()
		if err != nil {
			return fmt.Errorf("wait for session %s to be released: %w", c.CID, err)
		}
		if !held {
			return nil
		}
		select {
		case <-tick.C:
		case <-wait.C:
			// Unless a survivor is reporting the dead node's clients: it
			// then reports this one too, and takes it out after.
			if err := takeScript.Run(ctx, m.rdb, []string{table, table + ":reaper"}, c.CID).Err(); err != nil {
				return fmt.Errorf("take session %s from its node: %w", c.CID, err)
			}
		case <-ctx.Done():
			return fmt.Errorf("wait for session %s to be released: %w", c.CID, ctx.Err())
		}
	}
}

// takeScript takes the session ARGV[1] out of the client table KEYS[1]
// unless a survivor holds the lease KEYS[2] to report the table's
// clients (package nodes).
var takeScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
return redis.call('HDEL', KEYS[1], ARGV[1])
`)

// How long, and how often, Claim looks for another node to release a
// session.
const (
	releaseWait = time.Second
	releasePoll = 10 * time.Millisecond
)

// supersede tells the node that holds an older connection of cid, on the
// downlink of bkid, to close it with 4010.
func (m *Manager) supersede(ctx context.Context, bkid, cid string) error {
	err := pubsub.Publish(ctx, m.rdb, m.sharded, m.cfg.Channels.Downlink(bkid), protocol.AppendResumed(nil, cid, m.cfg.NodeID)).Err()
	if err != nil {
		return fmt.Errorf("close the older connection of %s: %w", cid, err)
	}
	return nil
}

// Missed is what a resumed client missed.
type Missed struct {
	// Entries are the messages of every backend, each backend's in
	// order, the backends' merged by position.
	Entries []Entry
	// Tails are, for each backend read, the last position read: the
	// splice checks that nothing came since.
	Tails map[string]history.ID
	// Recovered says no history was trimmed past what the client had, and
	// every offset it sent was known.
	Recovered bool
}

// Entry is one missed message.
type Entry struct {
	BKID string
	history.Entry
}

// maxRead bounds what one history read returns.
func (m *Manager) maxRead() int64 { return int64(cmp.Or(m.cfg.History.Size, history.DefaultSize)) }

// Read reads what the client of c missed: what follows each offset the
// client sent, and from the start of its session in every other history
// of its service. after, when not nil, replaces the offsets (a read again
// from the tails of the last).
func (m *Manager) Read(ctx context.Context, c Claims, offsets string, after map[string]history.ID) (Missed, error) {
	missed := Missed{Recovered: true, Tails: map[string]history.ID{}}
	seen := map[string]history.ID{}
	if after != nil {
		seen = after
	} else {
		offs, bad := history.ParseOffsets(offsets, protocol.ValidBKID)
		missed.Recovered = bad == 0
		for _, o := range offs {
			svc, known, err := m.reg.ServiceOf(ctx, o.BKID)
			if err != nil {
				return Missed{}, fmt.Errorf("resolve bkid %s: %w", o.BKID, err)
			}
			if !known || svc != c.Service {
				missed.Recovered = false // another service's, or unknown
				continue
			}
			seen[o.BKID] = o.ID
		}
	}
	var wants []history.Want
	var bkids []string
	for bkid, id := range seen {
		wants = append(wants, history.Want{Channel: m.cfg.Channels.Downlink(bkid), From: id, Seen: true})
		bkids = append(bkids, bkid)
	}
	born := history.ID{MS: uint64(max(c.Born, 0))}
	for _, bkid := range m.reg.BKIDs(c.Service) {
		if _, ok := seen[bkid]; !ok {
			wants = append(wants, history.Want{Channel: m.cfg.Channels.Downlink(bkid), From: born})
			bkids = append(bkids, bkid)
		}
	}
	got, err := history.Read(ctx, m.rdb, wants, m.maxRead())
	if err != nil {
		return Missed{}, err
	}
	for i, g := range got {
		bkid := bkids[i]
		missed.Tails[bkid] = g.Last
		if !g.Covered && after == nil {
			// A read again follows the first within moments: whether the
			// gap is covered is the first read's to say.
			missed.Recovered = false
		}
		for _, e := range g.Entries {
			missed.Entries = append(missed.Entries, Entry{BKID: bkid, Entry: e})
		}
	}
	Merge(missed.Entries)
	return missed, nil
}

// Merge orders the messages of several histories: each history's stay in
// order, and across histories they go by position (one clock on one
// Redis; a cluster's shards' clocks agree about as well as the backends'
// publishes could be ordered at all).
func Merge(entries []Entry) {
	slices.SortStableFunc(entries, func(a, b Entry) int {
		switch {
		case a.ID.Less(b.ID):
			return -1
		case b.ID.Less(a.ID):
			return 1
		}
		return cmp.Compare(a.BKID, b.BKID)
	})
}
