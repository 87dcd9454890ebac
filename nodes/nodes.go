// Package nodes lets the nodes that share a Redis see each other die, so
// that a node that dies without closing its clients (a crash, kill -9, a
// lost host) leaves no ghosts: within 3 x DMB_BACKEND_TIMEOUT a surviving
// node tells the backend of each of its clients, exactly once whatever the
// number of survivors, that the client is gone (client_disconnected, 1006,
// "node lost"). With no survivor, the next node to start does it.
//
// Everything is kept in Redis, under the registry's hash tag:
//
//	{dmb}:nodes                 sorted set: each running node's incarnation,
//	                            scored by its last heartbeat (Redis's clock)
//	{dmb}:node:{inst}           hash: cid -> bkid of each client the node
//	                            announced (the uplink writes it in the same
//	                            pipeline as client_connected and
//	                            client_disconnected)
//	{dmb}:node:{inst}:reaper    the survivor reporting a dead node's clients
//	                            (a lease)
//	{dmb}:node:{inst}:lost      a day's mark that the node was declared lost
//
// An incarnation is the node's name and a random suffix, so that a node
// restarted under the same name is a new incarnation, and its previous
// one is reported like any other dead node.
//
// Each node beats every DMB_BACKEND_TIMEOUT / 2; one whose beat is older
// than twice the timeout is dead. Each node looks for dead ones after its
// beat, and claims each with the lease, so that one survivor reports it;
// it reports the clients a chunk at a time, deleting each chunk after its
// publish, and removes the node when none is left. A survivor that dies
// while reporting leaves the rest to the next, which may report the last
// chunk again (the only way a client is reported twice). A node counts
// only while its own beats have gone through for twice the timeout, or
// since it started: after Redis was unreachable for a while, no node
// takes the others, which could not beat either, for dead.
//
// A node that the others took for dead (it could not reach Redis for
// longer than twice the timeout) learns it at its next beat: its clients'
// backends have been told they left, so it forgets them and closes them
// (1001), and goes on as a new incarnation. A node whose beat finds
// itself missing without that mark (Redis lost its data) writes its
// client table again.
package nodes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
	"github.com/dmb-broker/dmb/resume"
)

// Config describes a node's part in seeing nodes die.
type Config struct {
	Channels protocol.Channels
	NodeID   string
	// Timeout is DMB_BACKEND_TIMEOUT: a node beats every Timeout/2 and is
	// dead when its beat is older than 2 x Timeout.
	Timeout time.Duration
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// Lost is called when the other nodes took this node for dead: the
	// backends were told that its clients left. Retrack is called when
	// Redis lost the node's client table.
	Lost    func(ctx context.Context)
	Retrack func(ctx context.Context)
	// ResumeWindow, when not zero, is how long a dead node's clients may
	// resume their sessions (package resume): each is marked as it is
	// reported.
	ResumeWindow time.Duration
}

// Nodes is this node's heartbeat, and its watch over the others.
type Nodes struct {
	rdb     redis.UniversalClient
	sharded bool
	cfg     Config
	log     *slog.Logger
	m       *metrics.Metrics
	nodes   string // the sorted set's key
	keys    resume.Keys

	inst        atomic.Pointer[string] // this incarnation
	clientTable atomic.Pointer[string] // its client table's key, made with it
	live        atomic.Int64           // live nodes at the last beat

	mu      sync.Mutex // guards the beat's state below
	beaten  bool       // a beat has gone through
	okSince time.Time  // the beats have gone through since; zero: the last failed
	clean   bool       // no beat has failed since the start
}

// New returns the node's Nodes, with a fresh incarnation; nothing is
// written until Run.
func New(rdb redis.UniversalClient, cfg Config) *Nodes {
	n := &Nodes{rdb: rdb, sharded: pubsub.Sharded(rdb), cfg: cfg, log: cfg.Logger, m: cfg.Metrics,
		nodes: cfg.Channels.Key("nodes"), keys: resume.NewKeys(cfg.Channels), clean: true}
	n.renew()
	n.live.Store(1)
	return n
}

// renew takes a new incarnation.
func (n *Nodes) renew() {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	inst := n.cfg.NodeID + "/" + hex.EncodeToString(b[:])
	table := n.table(inst)
	n.clientTable.Store(&table)
	n.inst.Store(&inst)
}

// Clients returns the key of this node's client table.
// The uplink asks at every connect and disconnect: the key is made once.
func (n *Nodes) Clients() string { return *n.clientTable.Load() }

// Holder finds the node whose client table names cid, dead or alive (a
// dead node's clients are in its table until they are reported): the
// table's key and the bkid there, or "" when no node's table names it.
func (n *Nodes) Holder(ctx context.Context, cid string) (table, bkid string, err error) {
	insts, err := n.rdb.ZRange(ctx, n.nodes, 0, -1).Result()
	if err != nil {
		return "", "", fmt.Errorf("list the nodes: %w", err)
	}
	pipe := n.rdb.Pipeline()
	got := make([]*redis.StringCmd, len(insts))
	for i, inst := range insts {
		got[i] = pipe.HGet(ctx, n.table(inst), cid)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", "", fmt.Errorf("look for client %s: %w", cid, err)
	}
	for i, c := range got {
		if b, err := c.Result(); err == nil {
			return n.table(insts[i]), b, nil
		}
	}
	return "", "", nil
}

// Live returns how many nodes were live at the last beat (1 before it).
func (n *Nodes) Live() int { return int(n.live.Load()) }

func (n *Nodes) table(inst string) string { return n.cfg.Channels.Key("node", inst) }

// nodeName is the name of the node of an incarnation.
func nodeName(inst string) string {
	if i := strings.LastIndexByte(inst, '/'); i >= 0 {
		return inst[:i]
	}
	return inst
}

func (n *Nodes) stale() time.Duration { return 2 * n.cfg.Timeout }

// Run beats and watches until ctx ends.
func (n *Nodes) Run(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Timeout / 2)
	defer t.Stop()
	for {
		n.beat(ctx)
		if n.mayJudge() {
			n.reapDead(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// beatScript records a beat of ARGV[1] on Redis's clock and returns
// whether it was added anew and how many nodes beat within ARGV[2] ms;
// {-1, 0} when KEYS[2], the mark that the node was declared lost, is set.
var beatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1, 0}
end
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local live = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
return {added, live}
`)

func (n *Nodes) beat(ctx context.Context) {
	inst := *n.inst.Load()
	res, err := beatScript.Run(ctx, n.rdb, []string{n.nodes, n.table(inst) + ":lost"},
		inst, n.stale().Milliseconds()).Int64Slice()
	n.mu.Lock()
	first := !n.beaten
	if err != nil || len(res) != 2 {
		n.okSince, n.clean = time.Time{}, false
		n.mu.Unlock()
		if ctx.Err() == nil {
			n.m.RedisErrors.WithLabelValues("nodes").Inc()
			n.log.Debug("node heartbeat failed", "err", err)
		}
		return
	}
	n.beaten = true
	if n.okSince.IsZero() {
		n.okSince = time.Now()
	}
	n.mu.Unlock()
	switch added, live := res[0], res[1]; {
	case added < 0:
		n.log.Warn("the other nodes took this node for dead: its clients are closed, and it goes on as a new incarnation", "incarnation", inst)
		n.renew()
		if n.cfg.Lost != nil {
			n.cfg.Lost(ctx)
		}
	case added == 1 && !first:
		n.log.Warn("redis lost this node's record: writing its client table again")
		if n.cfg.Retrack != nil {
			n.cfg.Retrack(ctx)
		}
		fallthrough
	default:
		n.live.Store(max(1, live))
		n.m.Nodes.Set(float64(max(1, live)))
	}
}

// mayJudge tells whether this node's beats have gone through long enough
// for it to take another node's old beat as death.
func (n *Nodes) mayJudge() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.beaten && (n.clean || !n.okSince.IsZero() && time.Since(n.okSince) >= n.stale())
}

// claimScript returns up to 8 dead incarnations (beats older than ARGV[1]
// ms), each now leased to ARGV[2] for ARGV[3] ms under ARGV[4]..inst..
// ":reaper"; one that another survivor holds is left to it.
var claimScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, 8)
local mine = {}
for _, inst in ipairs(dead) do
  if inst ~= ARGV[2] and redis.call('SET', ARGV[4] .. inst .. ':reaper', ARGV[2], 'NX', 'PX', ARGV[3]) then
    table.insert(mine, inst)
  end
end
return mine
`)

// lease is how long a survivor holds a dead node between two chunks.
func (n *Nodes) lease() time.Duration { return max(n.cfg.Timeout, 5*time.Second) }

func (n *Nodes) reapDead(ctx context.Context) {
	self := *n.inst.Load()
	dead, err := claimScript.Run(ctx, n.rdb, []string{n.nodes},
		n.stale().Milliseconds(), self, n.lease().Milliseconds(), n.table("")).StringSlice()
	if err != nil {
		if ctx.Err() == nil {
			n.m.RedisErrors.WithLabelValues("nodes").Inc()
			n.log.Debug("looking for dead nodes failed", "err", err)
		}
		return
	}
	for _, inst := range dead {
		if err := n.reap(ctx, inst); err != nil {
			n.m.RedisErrors.WithLabelValues("nodes").Inc()
			n.log.Warn("reporting a dead node's clients failed; it is taken up again", "dead", nodeName(inst), "err", err)
		}
	}
}

// chunk is how many clients of a dead node are reported per round trip.
const chunk = 500

// reap reports every client of the dead incarnation inst to its backend,
// and removes the node.
func (n *Nodes) reap(ctx context.Context, inst string) error {
	table, name := n.table(inst), nodeName(inst)
	lease := table + ":reaper"
	reported := 0
	var cursor uint64
	for {
		cids, next, err := n.rdb.HScan(ctx, table, cursor, "*", chunk).Result()
		if err != nil {
			return fmt.Errorf("read the client table of %s: %w", name, err)
		}
		fields := make([]string, 0, len(cids)/2)
		bkids := make(map[string]string, len(cids)/2)
		for i := 0; i+1 < len(cids); i += 2 {
			fields = append(fields, cids[i])
			bkids[cids[i]] = cids[i+1]
		}
		// Report only the clients still in the table right before: a
		// client whose session was resumed meanwhile was taken out by the
		// resume, and its backend must not hear that it left after it
		// heard that it came back.
		present := fields
		if len(fields) > 0 {
			if present, err = presentScript.Run(ctx, n.rdb, []string{table}, fields).StringSlice(); err != nil {
				return fmt.Errorf("read the client table of %s: %w", name, err)
			}
		}
		pipe := n.rdb.Pipeline()
		for _, cid := range present {
			if bkid := bkids[cid]; protocol.ValidBKID(bkid) {
				if w := n.cfg.ResumeWindow; w > 0 {
					pipe.Set(ctx, n.keys.Ended(cid), bkid, w)
				}
				pubsub.Publish(ctx, pipe, n.sharded, n.cfg.Channels.Uplink(bkid), protocol.AppendNodeLost(nil, cid, name))
			}
		}
		if len(fields) > 0 {
			pipe.HDel(ctx, table, fields...)
		}
		pipe.PExpire(ctx, lease, n.lease())
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("report the clients of %s: %w", name, err)
		}
		fields = present
		reported += len(fields)
		n.m.MessagesOut.WithLabelValues(metrics.KindNodeLost).Add(float64(len(fields)))
		if cursor = next; cursor == 0 {
			left, err := n.rdb.HLen(ctx, table).Result()
			if err != nil {
				return fmt.Errorf("read the client table of %s: %w", name, err)
			}
			if left == 0 {
				break
			}
		}
	}
	if err := doneScript.Run(ctx, n.rdb, []string{n.nodes, table, lease, table + ":lost"}, inst).Err(); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	n.m.NodesLost.Inc()
	n.log.Warn("node lost: its clients were reported to their backends", "dead", name, "incarnation", inst, "clients", reported)
	return nil
}

// presentScript returns those of the clients ARGV that the client table
// KEYS[1] still names.
var presentScript = redis.NewScript(`
local present = {}
for _, cid in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], cid) == 1 then
    present[#present + 1] = cid
  end
end
return present
`)

// doneScript removes a dead incarnation whose clients were all reported,
// and marks it lost for a day so that it learns it, should it come back.
var doneScript = redis.NewScript(`
if redis.call('HLEN', KEYS[2]) > 0 then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], '1', 'EX', 86400)
return 1
`)

// leaveScript removes this incarnation when its client table is empty:
// every client's leave was published. Otherwise the record stays, and
// the survivors report the rest as lost.
var leaveScript = redis.NewScript(`
if redis.call('HLEN', KEYS[2]) > 0 then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
`)

// Leave removes this node at a clean shutdown, once the uplink published
// every client's leave.
func (n *Nodes) Leave(ctx context.Context) error {
	inst := *n.inst.Load()
	left, err := leaveScript.Run(ctx, n.rdb, []string{n.nodes, n.table(inst)}, inst).Int()
	if err != nil {
		return fmt.Errorf("leave the nodes: %w", err)
	}
	if left == 0 {
		n.log.Warn("some clients' leaves were not published: the other nodes will report them as lost")
	}
	return nil
}
