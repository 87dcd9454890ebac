// Package downlink carries what backends publish to clients: it holds one
// pattern subscription over every downlink channel (P:{bkid}), so that a
// node receives a new backend's messages from the moment it is acked without
// having to learn of it first. A Redis Cluster has no pattern subscriptions:
// there it subscribes to each backend's downlink shard channel as the
// registry learns the bkid (see Watch), and the registry holds the ack until
// every node has. It resolves each bkid to its service, decodes
// and validates the command, encodes the client frame once (not at all when
// no client of the service is on this node), and hands it to the broker's
// Sink. For a command with an id it publishes this node's
// bk_message_ack; for a payload it drops, an error event, both through the
// uplink's publisher.
//
// Every downlink channel's messages are handled one at a time in the order
// Redis delivers them, which keeps the order a backend published in: the
// subscriptions' readers hand them to one queue, bounded in bytes, and one
// worker drains it (handoff.go), so that Redis never waits for a fan-out.
// The downlink never touches client sessions; the Sink does.
package downlink

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// Sink delivers encoded frames to the clients of this node. Each method
// returns how many clients the frame was queued to, and never blocks on a
// client.
type Sink interface {
	// Serves tells whether a client of service is on this node: a frame
	// for a service with none here is not built.
	Serves(service string) bool
	Broadcast(service string, frame []byte, except []string) int
	Direct(service, cid string, frame []byte) int
	DirectUser(service, user string, frame []byte, except []string) int
	Kick(service, cid, reason string) int
	// Join and Leave change the rooms of the client cid, or of every
	// connection of user; Join also returns the clients refused for being
	// in too many rooms.
	Join(service, cid, user, room string) (joined, refused int)
	Leave(service, cid, user, room string) int
	Room(service, room string, frame []byte, except []string) int
	Presence(service, room string, countOnly bool, limit int) (count int, members []protocol.Member, truncated bool)
	// Resumed closes the connection of cid with 4010: its session was
	// resumed on another.
	Resumed(service, cid string) int
}

// Registry resolves bkids.
type Registry interface {
	ServiceOf(ctx context.Context, bkid string) (string, bool, error)
}

// Publisher publishes node events to a backend's uplink.
type Publisher interface {
	Publish(bkid string, payload []byte) error
}

// Config describes a Downlink.
type Config struct {
	Channels protocol.Channels
	NodeID   string
	Logger   *slog.Logger
	Metrics  *metrics.Metrics
	// MaxQueued bounds the bytes waiting between the subscriptions'
	// readers and the fan-out, MaxPayload a backend's payload (see
	// handoff.go); zero means DefaultMaxQueued and DefaultMaxPayload.
	MaxQueued  int
	MaxPayload int
	// Users says clients have users (auth is on): without it, a join,
	// leave or direct by user reaches nobody, and a join or leave by user
	// is reported as an error.
	Users bool
	// Nodes is how many live nodes share the Redis, for presence answers;
	// nil counts 1.
	Nodes func() int
	// OnUp, when set, runs each time the subscription is up again after
	// it was down, and at the start: Redis may have restarted.
	OnUp func(ctx context.Context)
}

// MaxPresenceMembers bounds the members one node lists in a presence
// answer: more are counted, and the answer says "truncated".
const MaxPresenceMembers = 10000

// Downlink subscribes to every backend's downlink channel.
type Downlink struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics.Metrics
	reg  Registry
	sink Sink
	pub  Publisher
	sub  *pubsub.Subscription // one server or Sentinel
	subs *pubsub.Shards       // cluster

	q                     handoff
	maxQueued, maxPayload int

	// The worker's own (see splice.go): the resumes waiting for it, and
	// what they need of the messages it handed out.
	tasks  chan func()
	last   map[string]history.ID // by bkid: the last recoverable message
	recent map[string]*recent    // by bkid: the last recoverable messages
	skips  map[string][]skip     // by bkid: cids that had messages from history
}

// New returns a downlink; nothing is received until Run.
func New(rdb redis.UniversalClient, reg Registry, sink Sink, pub Publisher, cfg Config) *Downlink {
	d := &Downlink{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, reg: reg, sink: sink, pub: pub,
		q:     handoff{ch: make(chan *redis.Message, handoffSlots)},
		tasks: make(chan func()), last: make(map[string]history.ID), recent: make(map[string]*recent), skips: make(map[string][]skip),
		maxQueued: cmp.Or(cfg.MaxQueued, DefaultMaxQueued), maxPayload: cmp.Or(cfg.MaxPayload, DefaultMaxPayload)}
	onMessage := d.offer
	onUp := func(ctx context.Context) {
		d.m.RedisReconnects.WithLabelValues("downlink").Inc()
		if cfg.OnUp != nil {
			cfg.OnUp(ctx)
		}
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		d.subs = pubsub.NewShards(cc, pubsub.ShardsConfig{
			Name: "downlink", OnMessage: onMessage, OnUp: onUp, Logger: cfg.Logger,
		})
		return d
	}
	d.sub = pubsub.New(rdb, pubsub.Config{
		Name:      "downlink",
		Patterns:  []string{cfg.Channels.DownlinkPattern()},
		OnMessage: onMessage,
		OnUp:      onUp,
		Logger:    cfg.Logger,
	})
	return d
}

// Watch subscribes, on a cluster, to the downlinks of bkids; elsewhere the
// pattern covers them already.
func (d *Downlink) Watch(bkids ...string) {
	if d.subs != nil {
		d.subs.Add(d.channels(bkids)...)
	}
}

// Unwatch unsubscribes, on a cluster, from the downlinks of bkids.
func (d *Downlink) Unwatch(bkids ...string) {
	if d.subs != nil {
		d.subs.Remove(d.channels(bkids)...)
	}
}

func (d *Downlink) channels(bkids []string) []string {
	out := make([]string, len(bkids))
	for i, b := range bkids {
		out[i] = d.cfg.Channels.Downlink(b)
	}
	return out
}

// Ready reports whether the downlink pattern, or on a cluster every
// watched downlink, is subscribed.
func (d *Downlink) Ready() bool {
	if d.subs != nil {
		return d.subs.Up()
	}
	return d.sub.Up()
}

// Run receives, and hands what it received to the broker, until ctx is
// done.
func (d *Downlink) Run(ctx context.Context) error {
	var worker sync.WaitGroup
	defer worker.Wait()
	worker.Go(func() { d.work(ctx) })
	if d.subs != nil {
		return d.subs.Run(ctx)
	}
	return d.sub.Run(ctx)
}

// Handle delivers one payload published on channel.
func (d *Downlink) Handle(ctx context.Context, channel string, payload []byte) {
	bkid, ok := d.cfg.Channels.DownlinkBKID(channel)
	if !ok {
		return // matched the pattern but is not a downlink channel
	}
	service, known, err := d.reg.ServiceOf(ctx, bkid)
	if err != nil || !known {
		d.m.Drops.WithLabelValues(metrics.DropUnknownBKID).Inc()
		d.log.Debug("downlink message for unknown bkid dropped", "bkid", bkid, "err", err)
		return
	}
	cmd, err := protocol.DecodeCommand(payload)
	if err != nil {
		d.m.Drops.WithLabelValues(metrics.DropMalformed).Inc()
		var pe *protocol.PayloadError
		var id []byte
		if errors.As(err, &pe) {
			id = pe.ID
		}
		d.log.Debug("downlink payload dropped", "bkid", bkid, "service", service, "err", err)
		d.publish(bkid, protocol.AppendBackendError(nil, err.Error(), id, d.cfg.NodeID))
		return
	}
	d.m.MessagesIn.WithLabelValues(cmd.Type).Inc()
	if (cmd.Type == protocol.TypeJoin || cmd.Type == protocol.TypeLeave) && cmd.CID == "" && !d.cfg.Users {
		d.m.Drops.WithLabelValues(metrics.DropMalformed).Inc()
		d.publish(bkid, protocol.AppendBackendError(nil, cmd.Type+" by user needs auth (DMB_JWT_SECRET)", cmd.ID, d.cfg.NodeID))
		return
	}
	// A recoverable message: its frame carries its offset, and the
	// sessions that a resume gave it already are left out.
	var skipped []string
	withOffset := func(frame []byte) []byte { return frame }
	if pos, ok := history.ParseID(cmd.Offset); ok {
		skipped = d.handedOut(bkid, pos, payload)
		withOffset = func(frame []byte) []byte { return protocol.WithOffset(frame, bkid, cmd.Offset) }
	}
	var delivered int
	switch cmd.Type {
	case protocol.TypeBroadcast, protocol.TypeDirect, protocol.TypeRoom:
		// A fleet's every node gets every message; on most, a small
		// service has no client, and a large frame cost as much to build
		// as to check (a 900 kB broadcast, 0.4 ms of its 1.5). A client
		// that joins meanwhile is one that joined after the message.
		if !d.sink.Serves(service) {
			if cmd.Type == protocol.TypeDirect && cmd.CID != "" {
				d.m.Drops.WithLabelValues(metrics.DropUnknownClient).Inc() // as the sink would
			}
			break
		}
		delivered = d.deliver(service, cmd, withOffset, skipped)
	case protocol.TypeKick:
		delivered = d.sink.Kick(service, cmd.CID, cmd.Reason)
	case protocol.TypeResumed:
		if cmd.Node != d.cfg.NodeID { // the node that resumed it holds the session now
			delivered = d.sink.Resumed(service, cmd.CID)
		}
	case protocol.TypeJoin:
		var refused int
		delivered, refused = d.sink.Join(service, cmd.CID, cmd.User, cmd.Room)
		if refused > 0 {
			d.publish(bkid, protocol.AppendBackendError(nil, protocol.ErrTextTooManyRooms, cmd.ID, d.cfg.NodeID))
		}
	case protocol.TypeLeave:
		delivered = d.sink.Leave(service, cmd.CID, cmd.User, cmd.Room)
	case protocol.TypePresence:
		d.presence(bkid, service, cmd)
		return
	}
	if cmd.ID != nil {
		d.publish(bkid, protocol.AppendMessageAck(nil, cmd.ID, d.cfg.NodeID, delivered))
		d.m.MessagesOut.WithLabelValues(metrics.KindMessageAck).Inc()
	}
}

// deliver builds the frame of a broadcast, a direct or a room message,
// with its offset when it is recoverable, and hands it to the sink.
func (d *Downlink) deliver(service string, cmd protocol.Command, withOffset func([]byte) []byte, skipped []string) int {
	switch cmd.Type {
	case protocol.TypeBroadcast:
		return d.sink.Broadcast(service, withOffset(protocol.AppendBroadcast(nil, cmd.Data)), joinExcept(cmd.Except, skipped))
	case protocol.TypeRoom:
		return d.sink.Room(service, cmd.Room, withOffset(protocol.AppendRoom(nil, cmd.Room, cmd.Data)), joinExcept(cmd.Except, skipped))
	}
	frame := withOffset(protocol.AppendDirect(nil, cmd.Data, cmd.ReplyTo, cmd.More))
	switch {
	case cmd.CID != "" && slices.Contains(skipped, cmd.CID):
		return 0
	case cmd.CID != "":
		return d.sink.Direct(service, cmd.CID, frame)
	default:
		// Every connection (every tab) of the user on this node; the
		// other nodes deliver to theirs. Only with auth do clients have
		// users.
		return d.sink.DirectUser(service, cmd.User, frame, skipped)
	}
}

// joinExcept returns the cids a fan-out leaves out: the backend's, and
// those a resume gave the message already.
func joinExcept(except, skipped []string) []string {
	if len(skipped) == 0 {
		return except
	}
	return append(slices.Clip(except), skipped...)
}

// presence answers a presence request with this node's clients: every
// node answers, with the number of live nodes it counts, so that the
// backend knows when it has every answer.
func (d *Downlink) presence(bkid, service string, cmd protocol.Command) {
	count, members, truncated := d.sink.Presence(service, cmd.Room, cmd.CountOnly, MaxPresenceMembers)
	nodes := 1
	if d.cfg.Nodes != nil {
		nodes = max(1, d.cfg.Nodes())
	}
	d.publish(bkid, protocol.AppendPresence(nil, cmd.ID, cmd.Room, d.cfg.NodeID, nodes, count, members, truncated))
	d.m.MessagesOut.WithLabelValues(metrics.KindPresence).Inc()
}

func (d *Downlink) publish(bkid string, payload []byte) {
	if err := d.pub.Publish(bkid, payload); err != nil {
		d.log.Debug("uplink event not published", "bkid", bkid, "err", err)
	}
}
