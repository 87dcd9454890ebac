package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// Target names the clients of a join or a leave: one client by its CID,
// or every connection of a User on every node (which needs auth,
// DMB_JWT_SECRET, on the nodes). With both, CID wins.
type Target struct {
	CID  string
	User string
}

func (t Target) valid() error {
	if t.CID == "" && t.User == "" {
		return errors.New("a join or a leave needs a cid or a user")
	}
	return nil
}

func validRoom(room string) error {
	if !protocol.ValidRoom(room) {
		return fmt.Errorf("invalid room name %q: 1-128 of [A-Za-z0-9_.:@/-]", room)
	}
	return nil
}

// Join puts a client, or every connection of a user, in room. Commands of
// one backend apply in the order published: a Room message published after
// Join reaches the new member. The client is told dmb:joined.
func (b *Backend) Join(ctx context.Context, room string, who Target) error {
	return b.membership(ctx, protocol.TypeJoin, room, who)
}

// LeaveRoom takes a client, or every connection of a user, out of room;
// the client is told dmb:left. (Leave is the backend's own bk_disconnect.)
func (b *Backend) LeaveRoom(ctx context.Context, room string, who Target) error {
	return b.membership(ctx, protocol.TypeLeave, room, who)
}

func (b *Backend) membership(ctx context.Context, typ, room string, who Target) error {
	if err := validRoom(room); err != nil {
		return err
	}
	if err := who.valid(); err != nil {
		return err
	}
	cmd := Command{Type: typ, Room: room, CID: who.CID}
	if who.CID == "" {
		cmd.User = who.User
	}
	return b.Publish(ctx, cmd)
}

// Room sends data to every member of room, on every node, except the
// clients whose cids are listed. Members get
// {"event":"dmb:room","room":...,"data":...}.
func (b *Backend) Room(ctx context.Context, room string, data any, except ...string) error {
	if err := validRoom(room); err != nil {
		return err
	}
	return b.Publish(ctx, Command{Type: protocol.TypeRoom, Room: room, Data: data, Except: except})
}

// DefaultPresenceTimeout is how long Presence waits for every node's
// answer when PresenceOptions.Timeout is zero.
const DefaultPresenceTimeout = 2 * time.Second

// PresenceOptions tune a Presence request.
type PresenceOptions struct {
	// CountOnly asks for the number of members rather than the list.
	CountOnly bool
	// Timeout bounds the wait for the answers, for a node that died
	// meanwhile; default DefaultPresenceTimeout. A deadline of ctx that
	// comes first ends the wait too.
	Timeout time.Duration
}

// PresenceResult gathers the answers of every node to one presence
// request.
type PresenceResult struct {
	Room string // "" for the whole service
	// Members are the members every node listed (nil with CountOnly).
	Members []Member
	// Count is the number of members, summed over the nodes; with
	// Truncated it exceeds len(Members).
	Count int
	// Nodes are the nodes that answered.
	Nodes []string
	// Complete says every node answered: as many as the answering nodes
	// count from their beats. False when the wait ended first.
	Complete bool
	// Truncated says a node had more members than it lists (10,000).
	Truncated bool
}

// presenceIDPrefix starts the id of every presence request the library
// sends; the answers to those are never handed to the event handler.
const presenceIDPrefix = "dmb-presence-"

// presenceAnswer reports whether payload answers a presence request of
// the library (a presence answer or an error about it).
func presenceAnswer(payload string) bool {
	if !strings.Contains(payload, `"`+presenceIDPrefix) {
		return false
	}
	var ev struct {
		Type string `json:"type"`
		ID   any    `json:"id"`
	}
	if json.Unmarshal([]byte(payload), &ev) != nil {
		return false
	}
	id, _ := ev.ID.(string)
	return (ev.Type == protocol.TypePresence || ev.Type == protocol.TypeError) && strings.HasPrefix(id, presenceIDPrefix)
}

// Presence asks every node for the clients of room ("" for every client
// of the service) and gathers the answers into one result, until every
// node the answering nodes count has answered or the wait ends (then
// Complete is false and the error nil). It listens on a subscription of
// its own, so a handler may call it; the answers never reach the handler.
// It returns an error when the request cannot be sent, when a node refuses
// it, or when ctx is cancelled.
func (b *Backend) Presence(ctx context.Context, room string, opts PresenceOptions) (PresenceResult, error) {
	res := PresenceResult{Room: room}
	if room != "" {
		if err := validRoom(room); err != nil {
			return res, err
		}
	}
	bkid := b.BKID()
	if bkid == "" {
		return res, errors.New("not registered")
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultPresenceTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// ended tells a wait that ended (not an error) from a cancelled ctx.
	ended := func(err error) (PresenceResult, error) {
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return res, ctx.Err()
		}
		// The connection's read deadline, set from wctx's, may fire a
		// moment before wctx itself ends.
		var ne net.Error
		if wctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
			return res, nil
		}
		return res, err
	}
	ps, done, err := b.subscribeFor(wctx, b.ch.Uplink(bkid))
	if err != nil {
		return ended(fmt.Errorf("subscribe to the uplink: %w", err))
	}
	defer done()
	id := randomID(presenceIDPrefix)
	payload, _ := json.Marshal(Command{Type: protocol.TypePresence, Room: room, ID: id, CountOnly: opts.CountOnly})
	if err := pubsub.Publish(wctx, b.rdb, b.sharded, b.ch.Downlink(bkid), payload).Err(); err != nil {
		return ended(fmt.Errorf("publish presence: %w", err))
	}
	seen := make(map[string]bool)
	want := 0
	if !opts.CountOnly {
		res.Members = []Member{}
	}
	for {
		msg, err := ps.ReceiveMessage(wctx)
		if err != nil {
			return ended(fmt.Errorf("wait for presence answers: %w", err))
		}
		if !strings.Contains(msg.Payload, id) {
			continue
		}
		var ev Event
		if json.Unmarshal([]byte(msg.Payload), &ev) != nil {
			continue
		}
		if string(ev.ID) != `"`+id+`"` {
			continue
		}
		switch ev.Type {
		case protocol.TypeError:
			return res, fmt.Errorf("presence refused by node %s: %s", ev.Node, ev.Error)
		case protocol.TypePresence:
			if seen[ev.Node] {
				continue
			}
			seen[ev.Node] = true
			res.Nodes = append(res.Nodes, ev.Node)
			want = max(want, ev.Nodes)
			if !opts.CountOnly {
				res.Members = append(res.Members, ev.Members...)
			}
			res.Count += max(ev.Count, len(ev.Members))
			res.Truncated = res.Truncated || ev.Truncated
			if len(seen) >= want {
				res.Complete = true
				return res, nil
			}
		}
	}
}
