package demo

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
)

// service is the DMB service the demo registers; the page connects to
// /ws/chat.
const service = "chat"

// Limits on what a chat line may carry, in characters (runes).
const (
	maxName = 32
	maxText = 500
)

// leaveTimeout bounds the bk_disconnect sent on shutdown, so that a
// dead Redis cannot hold up the exit.
const leaveTimeout = 2 * time.Second

// Messages the demo sends to clients, told apart by "kind".
type (
	chatLine struct {
		Kind string `json:"kind"` // "chat"
		Name string `json:"name"`
		Text string `json:"text"`
	}
	echoReply struct {
		Kind string          `json:"kind"` // "echo"
		Data json.RawMessage `json:"data"`
	}
	errorReply struct {
		Kind  string `json:"kind"` // "error"
		Error string `json:"error"`
	}
	presence struct {
		Kind   string `json:"kind"` // "presence"
		Online int    `json:"online"`
	}
)

// Run runs the chat backend for the service "chat" on rdb until ctx ends,
// then tells DMB it is leaving. It returns nil when ctx ends, and an error
// only when the backend cannot run at all (DMB refused the registration).
func Run(ctx context.Context, rdb redis.UniversalClient, opts backend.Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	b := backend.New(rdb, service, opts)
	c := &chat{b: b, log: opts.Logger.With("service", service), online: make(map[string]struct{})}

	err := b.Run(ctx, c.handle)
	if ctx.Err() == nil {
		return err
	}
	// Leaving frees DMB from waiting for the uplink subscription to vanish
	// before it moves our clients to another backend.
	leaveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
	defer cancel()
	if err := b.Leave(leaveCtx); err != nil {
		c.log.Warn("leave", "bkid", b.BKID(), "err", err)
	}
	return nil
}

// chat is the state of one running backend.
type chat struct {
	b   *backend.Backend
	log *slog.Logger
	// online holds the cids connected to this backend. Only handle touches
	// it, and the backend calls handle for one event at a time, so it needs
	// no lock.
	online map[string]struct{}
}

// handle is the backend.Handler: it turns one uplink event into downlink
// commands.
func (c *chat) handle(ctx context.Context, ev backend.Event) {
	var err error
	switch ev.Type {
	case backend.EventClientConnected:
		c.online[ev.CID] = struct{}{}
		err = c.b.Broadcast(ctx, presence{Kind: "presence", Online: len(c.online)})
	case backend.EventClientDisconnected:
		delete(c.online, ev.CID)
		err = c.b.Broadcast(ctx, presence{Kind: "presence", Online: len(c.online)})
	case backend.EventMessage:
		err = c.message(ctx, ev)
	default:
		// bk_message_ack and error events: the demo sends no ids, so there
		// is nothing to match them to.
		return
	}
	if err != nil {
		c.log.Warn("publish", "event", ev.Type, "cid", ev.CID, "bkid", c.b.BKID(), "err", err)
	}
}

// message broadcasts a chat line and answers its sender with an echo, or
// answers with an error alone when the data is not a chat line. Either way
// the sender gets exactly one direct reply, matched to its request by
// reply_to.
func (c *chat) message(ctx context.Context, ev backend.Event) error {
	line, err := parseChat(ev.Data)
	if err != nil {
		return c.b.Direct(ctx, ev.CID, errorReply{Kind: "error", Error: err.Error()}, ev.ID)
	}
	// Broadcast first: the sender sees its line among everyone's before the
	// echo confirms it.
	if err := c.b.Broadcast(ctx, line); err != nil {
		return err
	}
	return c.b.Direct(ctx, ev.CID, echoReply{Kind: "echo", Data: ev.Data}, ev.ID)
}

// parseChat reads {"text":..., "name":...} from a message's data. The name is
// optional ("anon"); both are trimmed and cut to their limits.
func parseChat(data json.RawMessage) (chatLine, error) {
	var fields map[string]json.RawMessage
	// null decodes to a nil map without an error; anything else that is not
	// an object fails.
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return chatLine{}, errors.New(`data must be a JSON object with a "text" string`)
	}
	var text string
	if err := json.Unmarshal(fields["text"], &text); err != nil {
		return chatLine{}, errors.New(`data must be a JSON object with a "text" string`)
	}
	if text = clean(text, maxText); text == "" {
		return chatLine{}, errors.New(`"text" is empty`)
	}
	var name string
	if raw, ok := fields["name"]; ok {
		if err := json.Unmarshal(raw, &name); err != nil {
			return chatLine{}, errors.New(`"name" must be a string`)
		}
	}
	if name = clean(name, maxName); name == "" {
		name = "anon"
	}
	return chatLine{Kind: "chat", Name: name, Text: text}, nil
}

// clean trims s and cuts it to at most n runes.
func clean(s string, n int) string {
	s = strings.TrimSpace(s)
	i := 0
	for pos := range s {
		if i == n {
			return strings.TrimSpace(s[:pos])
		}
		i++
	}
	return s
}
