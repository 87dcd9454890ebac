// Package backend is the Go library for writing a DMB backend. A backend
// talks only to Redis: it registers a service and gets a bkid, publishes
// broadcast, direct and kick commands on its downlink channel, and receives
// its clients' events on its uplink channel. Run keeps that going across
// Redis restarts: when the uplink subscription comes back it registers again
// with the same bkid (and follows a new one if Redis lost its registry).
// It registers again too when DMB says a leave it did not send marked it
// gone (bk_disconnected).
//
// Recoverable publishing (protocol, section 11): every downlink command
// (Publish, and everything built on it: Broadcast, Direct, DirectUser,
// Kick, Join, LeaveRoom, Room) is published recoverably by default, with
// FCALL dmb_publish on the downlink channel: DMB keeps it in the backend's
// history, clients get it with an offset, and a client that resumes its
// session within DMB_RESUME_WINDOW gets what it missed. Options.LiveOnly
// makes every command of a backend live-only (a plain PUBLISH, never
// recovered), Command.LiveOnly one command (typing indicators, cursor
// positions: what is stale by the time a client is back). When Redis
// cannot run the function (an older DMB that does not load it, a Redis
// that restarted and that DMB has not loaded it into yet, a Redis older
// than 7, or an ACL user without FCALL), the command is published with
// PUBLISH instead, live-only, and a warning is logged once; the next
// command tries FCALL again, and the warning comes again after a
// recoverable publish went through. Presence requests are questions, not
// messages: they are always a plain PUBLISH.
//
// A client that may come back arrives as a client_disconnected with
// Event.Resumable, and comes back as a client_connected with Event.Resumed
// and the same cid: keep a client's state for DMB_RESUME_WINDOW after a
// resumable disconnect.
//
// Rooms (protocol, section 10): Join and LeaveRoom change a client's (or a
// user's) rooms, Room sends to a room's members, Broadcast and Room leave
// out the cids listed as except, and Presence gathers every node's answer
// into one PresenceResult. Clients that join by themselves arrive as
// EventRoomJoined and EventRoomLeft.
//
// rdb may be a *redis.Client (one Redis, or redis.NewFailoverClient behind
// Sentinel) or a *redis.ClusterClient, on which the backend uses sharded
// pub/sub (SSUBSCRIBE, SPUBLISH), as DMB does there; New then adds a hook to
// the cluster client that makes it follow a failover (see
// pubsub.FollowFailovers).
//
//	b := backend.New(rdb, "chat", backend.Options{})
//	errc := make(chan error, 1)
//	go func() {
//		errc <- b.Run(ctx, func(ctx context.Context, ev backend.Event) {
//			if ev.Type == backend.EventMessage {
//				_ = b.Direct(ctx, ev.CID, ev.Data, ev.ID)
//			}
//		})
//	}()
//	select {
//	case <-b.Ready():
//		_ = b.Broadcast(ctx, map[string]string{"text": "hello"})
//	case err := <-errc: // refused
//		return err
//	}
package backend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/auth"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// Event types a backend receives on its uplink.
const (
	EventClientConnected    = protocol.TypeClientConnected
	EventClientDisconnected = protocol.TypeClientDisconnected
	EventMessage            = protocol.TypeMessage
	EventMessageAck         = protocol.TypeMessageAck
	EventError              = protocol.TypeError
	// EventDisconnected: a bk_disconnect for this backend's bkid took it
	// out of the live view. When the backend did not send it (Leave), Run
	// has registered again before handing the event over, which makes it
	// live again at once.
	EventDisconnected = protocol.TypeDisconnected
	// EventRoomJoined and EventRoomLeft: a client joined or left a room by
	// itself (its token's rooms allow it); Room and, with auth, User are set.
	EventRoomJoined = protocol.TypeRoomJoined
	EventRoomLeft   = protocol.TypeRoomLeft
)

// Event is one uplink event; which fields are set depends on Type.
type Event struct {
	Type      string          `json:"type"`
	CID       string          `json:"cid,omitempty"`
	Service   string          `json:"service,omitempty"`
	Remote    string          `json:"remote,omitempty"`
	User      string          `json:"user,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	ID        json.RawMessage `json:"id,omitempty"`
	Code      int             `json:"code,omitempty"`
	Reason    string          `json:"reason,omitempty"`
	Node      string          `json:"node,omitempty"`
	Delivered int             `json:"delivered,omitempty"`
	Error     string          `json:"error,omitempty"`
	BKID      string          `json:"bkid,omitempty"` // bk_disconnected
	// 1.1
	Room      string   `json:"room,omitempty"`      // room_joined, room_left, presence
	Nodes     int      `json:"nodes,omitempty"`     // presence: the nodes the answering node counts
	Count     int      `json:"count,omitempty"`     // presence with count_only
	Members   []Member `json:"members,omitempty"`   // presence
	Truncated bool     `json:"truncated,omitempty"` // presence: more members than one node lists
	// Resumed: a client_connected of a client that resumed its session
	// (same cid). Resumable: a client_disconnected of a client that may
	// resume it within DMB_RESUME_WINDOW (docs/protocol.md, section 11).
	Resumed   bool     `json:"resumed,omitempty"`
	Resumable bool     `json:"resumable,omitempty"`
	Rooms     []string `json:"rooms,omitempty"` // resumed: the rooms the session is in
}

// Member is a client in a presence answer.
type Member struct {
	CID  string `json:"cid"`
	User string `json:"user,omitempty"`
}

// Handler handles one event. Events arrive one at a time, in order.
type Handler func(ctx context.Context, ev Event)

// RawHandler handles one uplink event as DMB published it, a JSON object
// not decoded yet. Events arrive one at a time, in order. It is for
// backends that read only a few fields of very many events and cannot
// afford to decode each whole.
type RawHandler func(ctx context.Context, payload string)

// Options tune a Backend.
type Options struct {
	Prefix string // DMB_PREFIX of the DMB nodes; default "dmb"
	// RegisterTimeout is how long to wait for the answer to a bk_connect
	// before asking again; default 5s.
	RegisterTimeout time.Duration
	Logger          *slog.Logger
	// LiveOnly publishes every downlink command with a plain PUBLISH:
	// delivered to the clients connected now, never kept in DMB's history
	// nor recovered by a client that resumes. By default commands are
	// recoverable (FCALL dmb_publish); Command.LiveOnly makes one command
	// live-only.
	LiveOnly bool
}

// ErrRefused is returned by Run when DMB refuses the registration.
var ErrRefused = errors.New("registration refused")

// Backend is one registered backend of a service.
type Backend struct {
	rdb     redis.UniversalClient
	sharded bool // a Redis Cluster: SSUBSCRIBE and SPUBLISH
	service string
	ch      protocol.Channels
	opts    Options
	log     *slog.Logger

	mu    sync.Mutex // guards bkid
	bkid  string
	left  atomic.Bool // Leave was called: a bk_disconnected is this backend's own
	ready chan struct{}
	once  sync.Once

	// fellBack: the last recoverable publish fell back to PUBLISH (and
	// said so); it is said again only after one went through.
	fellBack atomic.Bool
}

// New returns a backend for service; nothing happens until Run.
func New(rdb redis.UniversalClient, service string, opts Options) *Backend {
	pubsub.FollowFailovers(rdb)
	if opts.Prefix == "" {
		opts.Prefix = "dmb"
	}
	if opts.RegisterTimeout <= 0 {
		opts.RegisterTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Backend{
		rdb: rdb, sharded: pubsub.Sharded(rdb), service: service, ch: protocol.NewChannels(opts.Prefix), opts: opts,
		log: opts.Logger.With("service", service), ready: make(chan struct{}),
	}
}

// BKID returns the current bkid, "" before the first registration.
func (b *Backend) BKID() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bkid
}

// Ready is closed once the backend is registered and listening.
func (b *Backend) Ready() <-chan struct{} { return b.ready }

// Run registers, listens to the uplink and hands every event to h until
// ctx ends, then returns nil. It returns an error wrapping ErrRefused if DMB
// refuses the service; Ready is never closed then. Run does not leave: call
// Leave before cancelling ctx to move the clients away at once.
func (b *Backend) Run(ctx context.Context, h Handler) error {
	return b.RunRaw(ctx, func(ctx context.Context, payload string) {
		var ev Event
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			b.log.Warn("undecodable uplink event", "bkid", b.BKID(), "err", err)
			return
		}
		h(ctx, ev)
	})
}

// RunRaw is Run with each event handed over undecoded.
func (b *Backend) RunRaw(ctx context.Context, h RawHandler) error {
	for {
		bkid, err := b.register(ctx, b.BKID())
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		b.setBKID(bkid)
		// Listen until the bkid changes (Redis lost the registry) or ctx ends.
		subCtx, cancel := context.WithCancel(ctx)
		var moved string
		first := true
		sub := pubsub.New(b.rdb, pubsub.Config{
			Name:     "uplink " + bkid,
			Channels: []string{b.ch.Uplink(bkid)},
			OnMessage: func(ctx context.Context, msg *redis.Message) {
				if presenceAnswer(msg.Payload) {
					return // Presence gathers these on a subscription of its own
				}
				if again, ok := b.registerAfterForeignLeave(ctx, bkid, msg.Payload); ok && again != bkid {
					moved = again
					cancel()
				}
				h(ctx, msg.Payload)
			},
			OnUp: func(ctx context.Context) {
				if first {
					first = false
					b.once.Do(func() { close(b.ready) })
					return
				}
				// Back after a Redis failure: make sure DMB still knows us
				// before handling what follows.
				again, err := b.register(ctx, bkid)
				if err != nil {
					b.log.Error("registering again after a reconnect failed", "bkid", bkid, "err", err)
					return
				}
				if again != bkid {
					moved = again
					cancel()
				}
			},
			Logger: b.log,
		})
		err = sub.Run(subCtx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if moved == "" {
			return err
		}
		// Listen on the new bkid; registering again with it keeps it.
		b.setBKID(moved)
		b.log.Info("bkid changed after Redis lost the registry", "old", bkid, "new", moved)
	}
}

// registerAfterForeignLeave registers again, with bkid, when payload is
// the bk_disconnected notice of a leave this backend did not send: anyone
// on Redis can send one, and registering again brings the backend back at
// once rather than at DMB's next liveness check. It reports the bkid and
// whether it registered.
func (b *Backend) registerAfterForeignLeave(ctx context.Context, bkid, payload string) (string, bool) {
	if b.left.Load() || !strings.Contains(payload, `"`+protocol.TypeDisconnected+`"`) {
		return "", false
	}
	var ev Event
	if json.Unmarshal([]byte(payload), &ev) != nil || ev.Type != protocol.TypeDisconnected || ev.BKID != bkid {
		return "", false
	}
	b.log.Warn("marked gone by a leave this backend did not send; registering again", "bkid", bkid)
	again, err := b.register(ctx, bkid)
	if err != nil {
		b.log.Error("registering again after a leave failed", "bkid", bkid, "err", err)
		return "", false
	}
	return again, true
}

func (b *Backend) setBKID(bkid string) {
	b.mu.Lock()
	b.bkid = bkid
	b.mu.Unlock()
}

// register sends bk_connect until it is answered; with bkid, it asks to keep
// that bkid.
func (b *Backend) register(ctx context.Context, bkid string) (string, error) {
	backoff := 100 * time.Millisecond
	for {
		got, err := b.registerOnce(ctx, bkid)
		if err == nil || errors.Is(err, ErrRefused) || ctx.Err() != nil {
			return got, err
		}
		b.log.Warn("registration failed; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (b *Backend) registerOnce(ctx context.Context, bkid string) (string, error) {
	nonce := newNonce()
	ctx, cancel := context.WithTimeout(ctx, b.opts.RegisterTimeout)
	defer cancel()
	ps, done, err := b.subscribeFor(ctx, b.ch.RegisterReply(nonce))
	if err != nil {
		return "", fmt.Errorf("subscribe to the answer: %w", err)
	}
	defer done()
	req := map[string]string{"type": protocol.TypeConnect, "nonce": nonce, "service": b.service}
	if bkid != "" {
		req["bkid"] = bkid
	}
	payload, _ := json.Marshal(req)
	if err := pubsub.Publish(ctx, b.rdb, b.sharded, b.ch.Register(), payload).Err(); err != nil {
		return "", fmt.Errorf("publish bk_connect: %w", err)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		return "", fmt.Errorf("wait for bk_connect answer: %w", err)
	}
	var ans struct {
		Type  string `json:"type"`
		Nonce string `json:"nonce"`
		BKID  string `json:"bkid"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(msg.Payload), &ans); err != nil {
		return "", fmt.Errorf("decode bk_connect answer: %w", err)
	}
	switch {
	case ans.Nonce != nonce:
		return "", fmt.Errorf("bk_connect answer for nonce %q, want %q", ans.Nonce, nonce)
	case ans.Type == protocol.TypeConnectNack:
		return "", fmt.Errorf("%w: %s", ErrRefused, ans.Error)
	case ans.Type != protocol.TypeConnectAck || !protocol.ValidBKID(ans.BKID):
		return "", fmt.Errorf("unexpected bk_connect answer %.200q", msg.Payload)
	}
	b.log.Info("registered", "bkid", ans.BKID)
	return ans.BKID, nil
}

func newNonce() string { return randomID("n-") }

// randomID returns prefix and 96 random bits in hex.
func randomID(prefix string) string {
	var n [12]byte
	_, _ = rand.Read(n[:])
	return prefix + hex.EncodeToString(n[:])
}

// subscribeFor subscribes to channel (SSUBSCRIBE on a cluster) for one
// request's answers and returns once Redis confirmed it: asking before
// that could miss the answer. go-redis watches only a context's deadline
// while it waits for a message, so the subscription is closed when ctx
// ends, which ends a wait on cancellation too. done closes it.
func (b *Backend) subscribeFor(ctx context.Context, channel string) (*redis.PubSub, func(), error) {
	var ps *redis.PubSub
	if b.sharded {
		ps = b.rdb.SSubscribe(ctx, channel)
	} else {
		ps = b.rdb.Subscribe(ctx, channel)
	}
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	done := func() { stop(); _ = ps.Close() }
	if _, err := ps.Receive(ctx); err != nil {
		done()
		return nil, nil, err
	}
	return ps, done, nil
}

// Command is a downlink command; Publish sends it as is.
type Command struct {
	Type    string `json:"type"`
	CID     string `json:"cid,omitempty"`
	User    string `json:"user,omitempty"`
	Data    any    `json:"data,omitempty"`
	ReplyTo any    `json:"reply_to,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// ID asks every node for a bk_message_ack.
	ID any `json:"id,omitempty"`
	// 1.1
	Room      string   `json:"room,omitempty"`       // join, leave, room, presence
	Except    []string `json:"except,omitempty"`     // broadcast, room: cids left out
	CountOnly bool     `json:"count_only,omitempty"` // presence
	// LiveOnly publishes this command with a plain PUBLISH, never
	// recovered (see Options.LiveOnly); it is not sent.
	LiveOnly bool `json:"-"`
}

// Publish sends a command on the backend's downlink channel: recoverably
// (FCALL dmb_publish), unless the backend or the command is live-only or
// Redis cannot run the function (see the package documentation).
func (b *Backend) Publish(ctx context.Context, cmd Command) error {
	bkid := b.BKID()
	if bkid == "" {
		return errors.New("not registered")
	}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("encode %s: %w", cmd.Type, err)
	}
	channel := b.ch.Downlink(bkid)
	if b.opts.LiveOnly || cmd.LiveOnly {
		err = pubsub.Publish(ctx, b.rdb, b.sharded, channel, payload).Err()
	} else {
		err = b.publishRecoverably(ctx, channel, payload)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", cmd.Type, err)
	}
	return nil
}

// publishRecoverably publishes payload on channel with DMB's function,
// which keeps it in the backend's history; when Redis cannot run the
// function, with PUBLISH.
func (b *Backend) publishRecoverably(ctx context.Context, channel string, payload []byte) error {
	err := b.rdb.FCall(ctx, history.Function, []string{channel}, payload).Err()
	if err == nil {
		b.fellBack.Store(false)
		return nil
	}
	if !functionUnavailable(err) {
		return err
	}
	if !b.fellBack.Swap(true) {
		b.log.Warn("Redis cannot run DMB's "+history.Function+" function: publishing live-only (PUBLISH) until it can; "+
			"the nodes load it at start and after a Redis restart (a DMB without sessions does not), "+
			"and a Redis ACL user needs FCALL and the history keys (docs/security.md)",
			"bkid", b.BKID(), "err", err)
	}
	return pubsub.Publish(ctx, b.rdb, b.sharded, channel, payload).Err()
}

// functionUnavailable reports whether err says that Redis cannot run
// DMB's function for this client, rather than that the command failed:
// not loaded, FCALL unknown (Redis before 7) or not allowed by the ACL.
func functionUnavailable(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Function not found") ||
		strings.HasPrefix(msg, "ERR unknown command") ||
		strings.HasPrefix(msg, "NOPERM")
}

// Broadcast sends data to every client of the service, on every node,
// except the clients whose cids are listed.
func (b *Backend) Broadcast(ctx context.Context, data any, except ...string) error {
	return b.Publish(ctx, Command{Type: protocol.TypeBroadcast, Data: data, Except: except})
}

// Direct sends data to one client; replyTo (the id of the client's message,
// or nil) lets the client match the reply to its request.
func (b *Backend) Direct(ctx context.Context, cid string, data, replyTo any) error {
	if raw, ok := replyTo.(json.RawMessage); ok && (len(raw) == 0 || string(raw) == "null") {
		replyTo = nil
	}
	return b.Publish(ctx, Command{Type: protocol.TypeDirect, CID: cid, Data: data, ReplyTo: replyTo})
}

// Kick closes a client with 4009 and reason.
func (b *Backend) Kick(ctx context.Context, cid, reason string) error {
	return b.Publish(ctx, Command{Type: protocol.TypeKick, CID: cid, Reason: reason})
}

// Leave tells DMB the backend is going away (bk_disconnect); its clients
// move to the other live backends of the service.
func (b *Backend) Leave(ctx context.Context) error {
	bkid := b.BKID()
	if bkid == "" {
		return nil
	}
	b.left.Store(true)
	payload, _ := json.Marshal(map[string]string{"type": protocol.TypeDisconnect, "bkid": bkid})
	if err := pubsub.Publish(ctx, b.rdb, b.sharded, b.ch.Register(), payload).Err(); err != nil {
		return fmt.Errorf("publish bk_disconnect: %w", err)
	}
	return nil
}

// DirectUser sends data to every connection of user, on every node: each
// tab the user has open. It needs auth (DMB_JWT_SECRET) on the nodes.
func (b *Backend) DirectUser(ctx context.Context, user string, data any) error {
	return b.Publish(ctx, Command{Type: protocol.TypeDirect, User: user, Data: data})
}

// MintToken returns a client token for user, valid for ttl, signed with
// the secret the DMB nodes have as DMB_JWT_SECRET, admitting the listed
// services (every service when none is listed). Hand it to the browser,
// which connects with ?token=.
func MintToken(secret, user string, ttl time.Duration, services ...string) (string, error) {
	return auth.Mint(secret, user, ttl, services...)
}

// Reply answers a client's message event: a direct to its cid whose
// reply_to is the message's id, which resolves the client's request.
func (b *Backend) Reply(ctx context.Context, ev Event, data any) error {
	return b.Direct(ctx, ev.CID, data, ev.ID)
}

// RequestFunc answers one client request; its result is the reply's data.
// An error is sent back as {"error": "<text>"}.
type RequestFunc func(ctx context.Context, ev Event) (any, error)

// Requests returns a Handler that answers every message event with fn's
// result, through Reply, and passes every other event to rest (which may be
// nil).
func (b *Backend) Requests(fn RequestFunc, rest Handler) Handler {
	return func(ctx context.Context, ev Event) {
		if ev.Type != EventMessage {
			if rest != nil {
				rest(ctx, ev)
			}
			return
		}
		out, err := fn(ctx, ev)
		if err != nil {
			out = map[string]string{"error": err.Error()}
		}
		if err := b.Reply(ctx, ev, out); err != nil {
			b.log.Warn("reply not sent", "cid", ev.CID, "bkid", b.BKID(), "err", err)
		}
	}
}
