package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
		Kind   string   `json:"kind"` // "presence"
		Online int      `json:"online"`
		Names  []string `json:"names"` // sorted, one per client
	}
	timeReply struct {
		Kind string `json:"kind"` // "time"
		Now  string `json:"now"`  // RFC 3339, UTC
	}
)

// anon is the name of a client that has not said hello, or said it without
// a name.
const anon = "anon"

// Errors the demo answers a message with, as the "error" of its reply.
var (
	errNotObject = errors.New(`data must be a JSON object with a "text" string`)
	errEmptyText = errors.New(`"text" is empty`)
	errNameType  = errors.New(`"name" must be a string`)
	errKindType  = errors.New(`"kind" must be a string`)
)

// Run runs the chat backend for the service "chat" on rdb until ctx ends,
// then tells DMB it is leaving. It returns nil when ctx ends, and an error
// only when the backend cannot run at all (DMB refused the registration).
func Run(ctx context.Context, rdb redis.UniversalClient, opts backend.Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	b := backend.New(rdb, service, opts)
	c := &chat{b: b, log: opts.Logger.With("service", service), online: make(map[string]string)}

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
	// online maps the cids connected to this backend to their names. Only
	// handle touches it, and the backend calls handle for one event at a
	// time, so it needs no lock.
	online map[string]string
}

// handle is the backend.Handler: it turns one uplink event into downlink
// commands.
func (c *chat) handle(ctx context.Context, ev backend.Event) {
	var err error
	switch ev.Type {
	case backend.EventClientConnected:
		// A client rebound to this backend is announced again; it keeps
		// the name it gave.
		if _, ok := c.online[ev.CID]; !ok {
			c.online[ev.CID] = anon
		}
		err = c.b.Broadcast(ctx, c.presence())
	case backend.EventClientDisconnected:
		delete(c.online, ev.CID)
		err = c.b.Broadcast(ctx, c.presence())
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

// presence lists the clients of this backend by name.
func (c *chat) presence() presence {
	names := make([]string, 0, len(c.online))
	for _, name := range c.online {
		names = append(names, name)
	}
	slices.Sort(names)
	return presence{Kind: "presence", Online: len(names), Names: names}
}

// message answers one message by its data's "kind":
//   - "hello" {"name"}: the client's name for the online list; presence
//     is broadcast, and nothing is replied (DMB's ack is enough).
//   - "time": a direct reply {"kind":"time","now":...}.
//   - "chat" or none {"name","text"}: the line is broadcast and the sender
//     gets a direct echo.
//
// Data that is none of these gets a direct error reply alone. Every direct
// reply carries the message's id back as reply_to.
func (c *chat) message(ctx context.Context, ev backend.Event) error {
	fields, kind, err := parseMessage(ev.Data)
	if err != nil {
		return c.replyError(ctx, ev, err)
	}
	switch kind {
	case "hello":
		name, err := parseName(fields)
		if err != nil {
			return c.replyError(ctx, ev, err)
		}
		c.online[ev.CID] = name
		return c.b.Broadcast(ctx, c.presence())
	case "time":
		return c.b.Direct(ctx, ev.CID, timeReply{Kind: "time", Now: time.Now().UTC().Format(time.RFC3339)}, ev.ID)
	case "", "chat":
		line, err := parseChat(fields)
		if err != nil {
			return c.replyError(ctx, ev, err)
		}
		// Broadcast first: the sender sees its line among everyone's
		// before the echo confirms it.
		if err := c.b.Broadcast(ctx, line); err != nil {
			return err
		}
		return c.b.Direct(ctx, ev.CID, echoReply{Kind: "echo", Data: ev.Data}, ev.ID)
	default:
		return c.replyError(ctx, ev, fmt.Errorf("unknown kind %q", kind))
	}
}

// replyError answers a message that the demo cannot take with what was
// wrong with it.
func (c *chat) replyError(ctx context.Context, ev backend.Event, err error) error {
	return c.b.Direct(ctx, ev.CID, errorReply{Kind: "error", Error: err.Error()}, ev.ID)
}

// parseMessage reads a message's data as a JSON object and its optional
// "kind".
func parseMessage(data json.RawMessage) (map[string]json.RawMessage, string, error) {
	var fields map[string]json.RawMessage
	// null decodes to a nil map without an error; anything else that is not
	// an object fails.
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return nil, "", errNotObject
	}
	var kind string
	if raw, ok := fields["kind"]; ok {
		if err := json.Unmarshal(raw, &kind); err != nil {
			return nil, "", errKindType
		}
	}
	return fields, kind, nil
}

// parseChat reads {"text":..., "name":...} from a message's fields. The
// name is optional ("anon"); both are trimmed and cut to their limits.
func parseChat(fields map[string]json.RawMessage) (chatLine, error) {
	var text string
	if err := json.Unmarshal(fields["text"], &text); err != nil {
		return chatLine{}, errNotObject
	}
	if text = clean(text, maxText); text == "" {
		return chatLine{}, errEmptyText
	}
	name, err := parseName(fields)
	if err != nil {
		return chatLine{}, err
	}
	return chatLine{Kind: "chat", Name: name, Text: text}, nil
}

// parseName reads the optional "name" of a message's fields, trimmed and
// cut to maxName; a missing, null or blank name is anon.
func parseName(fields map[string]json.RawMessage) (string, error) {
	var name string
	if raw, ok := fields["name"]; ok {
		if err := json.Unmarshal(raw, &name); err != nil {
			return "", errNameType
		}
	}
	if name = clean(name, maxName); name == "" {
		name = anon
	}
	return name, nil
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
