// Package history keeps what backends publish recoverably (docs/protocol.md,
// section 11): a Redis function library that stores a message in the
// backend's history and publishes it in one atomic step, and the reads
// that give a resumed client what it missed.
//
// Each backend's history is a Redis stream, {P:bkid}:history: its key hashes
// to the slot of the backend's downlink channel, so that on a Redis Cluster
// the function writes and publishes on one shard. A stream entry's id is
// the message's position, which every node sees the same; clients see it
// as an offset, "bkid:position".
package history

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/pubsub"
)

// Function is the name backends call: FCALL dmb_publish 1 <downlink
// channel> <payload>.
const Function = "dmb_publish"

// Config bounds every backend's history.
type Config struct {
	Size int           // messages kept per backend
	TTL  time.Duration // how long a message is kept at most
	// MaxBytes refuses larger payloads (DMB_MAX_BACKEND_BYTES): DMB
	// would drop them, and a history holds Size of them at most.
	MaxBytes int
}

// Defaults of the settings.
const (
	DefaultSize     = 10000
	DefaultTTL      = 2 * time.Minute
	DefaultMaxBytes = 1 << 20
)

// library is the function library: the payload is stored as is, and
// published with its position as "offset", the object's last member, so
// that a node reads it from the live message too (the last of members of
// one name is the one read: a backend's own "offset" cannot pass for it).
const library = `#!lua name=dmb

local size = %d
local ttl = %d
local publish = '%s'
local maxbytes = %d

redis.register_function('%s', function(keys, args)
  local channel = keys[1]
  local payload = args[1]
  if #keys ~= 1 or type(payload) ~= 'string' or not string.find(payload, '^[ \t\r\n]*{[ \t\r\n]*"') or not string.find(payload, '}[ \t\r\n]*$') then
    return redis.error_reply('ERR ` + Function + `: one key (the downlink channel) and a JSON object')
  end
  if #payload > maxbytes then
    return redis.error_reply('ERR ` + Function + `: payload too large')
  end
  local key = '{' .. channel .. '}:history'
  local id = redis.call('XADD', key, 'MAXLEN', size, '*', 'p', payload)
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl
  if oldest > 0 then
    redis.call('XTRIM', key, 'MINID', '~', oldest)
  end
  redis.call('PEXPIRE', key, ttl)
  local live = string.gsub(payload, '}[ \t\r\n]*$', ',"offset":"' .. id .. '"}', 1)
  return redis.call(publish, channel, live)
end)
`

// Library returns the function library's code for cfg; sharded says the
// Redis is a cluster, where the function publishes with SPUBLISH.
func Library(cfg Config, sharded bool) string {
	publish := "PUBLISH"
	if sharded {
		publish = "SPUBLISH"
	}
	maxBytes := cfg.MaxBytes
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	return fmt.Sprintf(library, cfg.Size, cfg.TTL.Milliseconds(), publish, maxBytes, Function)
}

// Load loads the function library into Redis, on every primary of a
// cluster, replacing what was there: DMB calls it at start and whenever it
// reconnects, since a Redis that restarted without its data has lost it.
// Every node loads the same library when they share their settings; the
// last loaded wins.
func Load(ctx context.Context, rdb redis.UniversalClient, cfg Config) error {
	code := Library(cfg, pubsub.Sharded(rdb))
	load := func(ctx context.Context, c redis.Cmdable) error {
		if err := c.FunctionLoadReplace(ctx, code).Err(); err != nil {
			if strings.Contains(err.Error(), "unknown command") {
				// The error quotes the whole library: say what it means.
				return fmt.Errorf("load the %s function library: %w", Function, ErrNoFunctions)
			}
			return fmt.Errorf("load the %s function library: %w", Function, err)
		}
		return nil
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return load(ctx, m) })
	}
	return load(ctx, rdb)
}

// ErrNoFunctions is a Redis without functions: older than 7.0.
var ErrNoFunctions = errors.New("this Redis has no functions (Redis 7.0 or later is needed)")

// Key is the history of the backend whose downlink channel is channel.
func Key(channel string) string { return "{" + channel + "}:history" }

// ID is a position in a history: a stream entry's id, milliseconds and a
// sequence number.
type ID struct{ MS, Seq uint64 }

// ParseID reads "ms-seq".
func ParseID(s string) (ID, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return ID{}, false
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return ID{}, false
	}
	return ID{a, b}, true
}

// Less orders positions.
func (a ID) Less(b ID) bool { return a.MS < b.MS || a.MS == b.MS && a.Seq < b.Seq }

func (a ID) String() string {
	return strconv.FormatUint(a.MS, 10) + "-" + strconv.FormatUint(a.Seq, 10)
}

// Offset is a client's position in one backend's history.
type Offset struct {
	BKID string
	ID   ID
}

// String is the offset as clients see it: "bkid:ms-seq".
func (o Offset) String() string { return o.BKID + ":" + o.ID.String() }

// MaxOffsets bounds the offsets a resume may name.
const MaxOffsets = 32

// ParseOffsets reads a resume's offsets, "bkid:ms-seq" separated by
// commas, keeping the greatest of each backend. bad counts those that are
// not offsets, or over MaxOffsets: their streams cannot be recovered.
func ParseOffsets(s string, validBKID func(string) bool) (out []Offset, bad int) {
	if s == "" {
		return nil, 0
	}
	for i, part := range strings.Split(s, ",") {
		bkid, pos, ok := strings.Cut(part, ":")
		id, okID := ParseID(pos)
		if i >= MaxOffsets || !ok || !okID || !validBKID(bkid) {
			bad++
			continue
		}
		merged := false
		for j := range out {
			if out[j].BKID == bkid {
				if out[j].ID.Less(id) {
					out[j].ID = id
				}
				merged = true
			}
		}
		if !merged {
			out = append(out, Offset{bkid, id})
		}
	}
	return out, bad
}

// Want is what a resume reads of one backend's history: what follows the
// client's last offset, or, when the client has none of that backend,
// what was published since its session began.
type Want struct {
	Channel string // the backend's downlink channel
	From    ID
	Seen    bool // From is an entry the client got, not the session's start
}

// Entry is one stored message.
type Entry struct {
	ID      ID
	Payload []byte
}

// Got is what a read found of one history.
type Got struct {
	Entries []Entry // after From, in order
	// Covered says nothing between From and the first entry is missing:
	// From, when Seen, is still an entry of the history; else the history
	// was not trimmed past From.
	Covered bool
	Last    ID // the last entry read, or From
}

// Read reads what each want asks for, at most max entries of each, in one
// round trip.
func Read(ctx context.Context, rdb redis.UniversalClient, wants []Want, max int64) ([]Got, error) {
	type cmds struct {
		info  *redis.XInfoStreamCmd
		rng   *redis.XMessageSliceCmd
		exist *redis.IntCmd
	}
	cs := make([]cmds, len(wants))
	pipe := rdb.Pipeline()
	for i, w := range wants {
		key := Key(w.Channel)
		cs[i].exist = pipe.Exists(ctx, key)
		cs[i].info = pipe.XInfoStream(ctx, key)
		cs[i].rng = pipe.XRangeN(ctx, key, w.From.String(), "+", max+1)
	}
	// Each command's own error is checked below: XINFO of a history that
	// does not exist fails, and means only that.
	_, _ = pipe.Exec(ctx)
	out := make([]Got, len(wants))
	for i, w := range wants {
		g := &out[i]
		g.Last = w.From
		n, err := cs[i].exist.Result()
		if err != nil {
			return nil, fmt.Errorf("read history %s: %w", w.Channel, err)
		}
		if n == 0 {
			// No history: nothing was published recoverably for as long as
			// it is kept, which is at least the resume window.
			g.Covered = true
			continue
		}
		info, err := cs[i].info.Result()
		if err != nil {
			return nil, fmt.Errorf("read history %s: %w", w.Channel, err)
		}
		msgs, err := cs[i].rng.Result()
		if err != nil {
			return nil, fmt.Errorf("read history %s: %w", w.Channel, err)
		}
		first, _ := ParseID(info.FirstEntry.ID)
		present := false
		for _, m := range msgs {
			id, ok := ParseID(m.ID)
			if !ok {
				continue
			}
			if w.Seen && id == w.From {
				present = true // the client has it
				continue
			}
			p, _ := m.Values["p"].(string)
			g.Entries = append(g.Entries, Entry{ID: id, Payload: []byte(p)})
			g.Last = id
		}
		// Trimming takes entries from the head only, so what is kept runs
		// without a gap from the first entry on.
		if w.Seen {
			// Whether From was the entry just before the first one kept
			// cannot be told: a trimmed From is not covered.
			g.Covered = present
		} else {
			g.Covered = info.EntriesAdded == info.Length || !w.From.Less(first)
		}
		if int64(len(g.Entries)) > max {
			g.Entries, g.Covered = g.Entries[:max], false
			g.Last = g.Entries[max-1].ID
		}
	}
	return out, nil
}
