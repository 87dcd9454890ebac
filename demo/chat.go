package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
	// roomLine is a chat line said in a room, sent to its members only.
	roomLine struct {
		Kind string `json:"kind"` // "chat"
		Room string `json:"room"`
		Name string `json:"name"`
		Text string `json:"text"`
	}
	// roomMembers tells a room's members who is in it, as DMB's presence
	// lists them.
	roomMembers struct {
		Kind   string   `json:"kind"` // "members"
		Room   string   `json:"room"`
		Online int      `json:"online"`
		Names  []string `json:"names"` // sorted, one per client
	}
	// roomList lists the rooms this backend's clients are in, with how
	// many of them each holds; broadcast when it changes, and the reply to
	// {"kind":"rooms"}.
	roomList struct {
		Kind  string     `json:"kind"` // "rooms"
		Rooms []roomInfo `json:"rooms"`
	}
	roomInfo struct {
		Room    string `json:"room"`
		Members int    `json:"members"`
	}
	// membershipReply answers a join or a leave: "joined" or "left".
	membershipReply struct {
		Kind string `json:"kind"`
		Room string `json:"room"`
	}
)

// maxClientRooms bounds the rooms one client may be in through the demo.
const maxClientRooms = 10

// presenceTimeout bounds the wait for DMB's answer to a presence request,
// for a node that dies meanwhile.
const presenceTimeout = time.Second

// anon is the name of a client that has not said hello, or said it without
// a name.
const anon = "anon"

// Errors the demo answers a message with, as the "error" of its reply.
var (
	errNotObject = errors.New(`data must be a JSON object with a "text" string`)
	errEmptyText = errors.New(`"text" is empty`)
	errNameType  = errors.New(`"name" must be a string`)
	errKindType  = errors.New(`"kind" must be a string`)
	errRoomType  = errors.New(`"join", "leave" and "room" must be strings`)
	errSayType   = errors.New(`"say" must be a string`)
	errTooMany   = fmt.Errorf("in too many rooms (at most %d)", maxClientRooms)
)

// Run runs the chat backend for the service "chat" on rdb until ctx ends,
// then tells DMB it is leaving. It returns nil when ctx ends, and an error
// only when the backend cannot run at all (DMB refused the registration).
func Run(ctx context.Context, rdb redis.UniversalClient, opts backend.Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	b := backend.New(rdb, service, opts)
	c := &chat{b: b, log: opts.Logger.With("service", service), online: make(map[string]string), rooms: make(map[string]map[string]bool)}

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
	// rooms maps the cids of this backend's clients to the rooms they are
	// in, as the demo put them there (or they joined by themselves).
	rooms map[string]map[string]bool
}

// handle is the backend.Handler: it turns one uplink event into downlink
// commands.
func (c *chat) handle(ctx context.Context, ev backend.Event) {
	var err error
	switch ev.Type {
	case backend.EventClientConnected:
		// A client rebound to this backend is announced again; it keeps
		// the name it gave (a resumed one gives it again).
		if _, ok := c.online[ev.CID]; !ok {
			c.online[ev.CID] = anon
		}
		err = c.b.Broadcast(ctx, c.presence())
		// A resumed session is still in its rooms.
		for _, room := range ev.Rooms {
			c.addRoom(ev.CID, room)
		}
		if len(ev.Rooms) > 0 {
			err = errors.Join(err, c.roomsChanged(ctx, ev.Rooms...))
		}
	case backend.EventClientDisconnected:
		delete(c.online, ev.CID)
		err = c.b.Broadcast(ctx, c.presence())
		// DMB took the client out of its rooms: tell the others who is
		// left.
		if rooms := c.rooms[ev.CID]; len(rooms) > 0 {
			delete(c.rooms, ev.CID)
			err = errors.Join(err, c.roomsChanged(ctx, slices.Sorted(maps.Keys(rooms))...))
		}
	case backend.EventRoomJoined, backend.EventRoomLeft:
		// A client that joined or left by itself (its token allows it).
		if ev.Type == backend.EventRoomJoined {
			c.addRoom(ev.CID, ev.Room)
		} else {
			c.removeRoom(ev.CID, ev.Room)
		}
		err = c.roomsChanged(ctx, ev.Room)
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
//   - "rooms": a direct reply with the room list (roomList).
//   - {"join":room}, {"leave":room}, {"say":text,"room":room}: see
//     roomMessage.
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
	// Rooms: {"join":room}, {"leave":room}, {"say":text,"room":room}.
	for _, key := range []string{"join", "leave", "say"} {
		if _, ok := fields[key]; ok {
			return c.roomMessage(ctx, ev, key, fields)
		}
	}
	switch kind {
	case "rooms":
		return c.b.Reply(ctx, ev, c.roomList())
	case "hello":
		name, err := parseName(fields)
		if err != nil {
			return c.replyError(ctx, ev, err)
		}
		c.online[ev.CID] = name
		err = c.b.Broadcast(ctx, c.presence())
		// The rooms it is in show the new name too.
		for _, room := range slices.Sorted(maps.Keys(c.rooms[ev.CID])) {
			err = errors.Join(err, c.members(ctx, room))
		}
		return err
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

// roomMessage handles {"join":room}, {"leave":room} and
// {"say":text,"room":room} (key is which):
//   - join puts the client in room through DMB, tells the room's members
//     who is in it (DMB's presence), broadcasts the room list, and replies
//     {"kind":"joined","room":...}.
//   - leave does the same the other way, replying {"kind":"left",...}.
//   - say sends {"kind":"chat","room","name","text"} to the room's members
//     only (a room command, not a direct per member), then echoes to the
//     sender like a chat line. The sender must be in the room; its name is
//     the one of its hello, or the message's "name".
func (c *chat) roomMessage(ctx context.Context, ev backend.Event, key string, fields map[string]json.RawMessage) error {
	field := key
	if key == "say" {
		field = "room"
	}
	// A pointer tells null, which decodes without an error, from a string.
	var name *string
	if err := json.Unmarshal(fields[field], &name); err != nil || name == nil {
		return c.replyError(ctx, ev, errRoomType)
	}
	room := *name
	switch key {
	case "join":
		if c.rooms[ev.CID][room] {
			return c.b.Reply(ctx, ev, membershipReply{Kind: "joined", Room: room})
		}
		if len(c.rooms[ev.CID]) >= maxClientRooms {
			return c.replyError(ctx, ev, errTooMany)
		}
		if err := c.b.Join(ctx, room, backend.Target{CID: ev.CID}); err != nil {
			return c.replyError(ctx, ev, err)
		}
		c.addRoom(ev.CID, room)
		if err := c.roomsChanged(ctx, room); err != nil {
			return err
		}
		return c.b.Reply(ctx, ev, membershipReply{Kind: "joined", Room: room})
	case "leave":
		if !c.rooms[ev.CID][room] {
			return c.b.Reply(ctx, ev, membershipReply{Kind: "left", Room: room})
		}
		if err := c.b.LeaveRoom(ctx, room, backend.Target{CID: ev.CID}); err != nil {
			return c.replyError(ctx, ev, err)
		}
		c.removeRoom(ev.CID, room)
		if err := c.roomsChanged(ctx, room); err != nil {
			return err
		}
		return c.b.Reply(ctx, ev, membershipReply{Kind: "left", Room: room})
	default: // say
		var text string
		if err := json.Unmarshal(fields["say"], &text); err != nil {
			return c.replyError(ctx, ev, errSayType)
		}
		if text = clean(text, maxText); text == "" {
			return c.replyError(ctx, ev, errors.New(`"say" is empty`))
		}
		if !c.rooms[ev.CID][room] {
			return c.replyError(ctx, ev, fmt.Errorf("not in room %q: join it first", room))
		}
		name := c.online[ev.CID]
		if _, ok := fields["name"]; ok || name == "" {
			var err error
			if name, err = parseName(fields); err != nil {
				return c.replyError(ctx, ev, err)
			}
		}
		if err := c.b.Room(ctx, room, roomLine{Kind: "chat", Room: room, Name: name, Text: text}); err != nil {
			return err
		}
		return c.b.Reply(ctx, ev, echoReply{Kind: "echo", Data: ev.Data})
	}
}

func (c *chat) addRoom(cid, room string) {
	if c.rooms[cid] == nil {
		c.rooms[cid] = make(map[string]bool)
	}
	c.rooms[cid][room] = true
}

func (c *chat) removeRoom(cid, room string) {
	delete(c.rooms[cid], room)
	if len(c.rooms[cid]) == 0 {
		delete(c.rooms, cid)
	}
}

// roomsChanged tells the members of each room who is in it now, and
// broadcasts the room list.
func (c *chat) roomsChanged(ctx context.Context, rooms ...string) error {
	var errs []error
	for _, room := range rooms {
		errs = append(errs, c.members(ctx, room))
	}
	errs = append(errs, c.b.Broadcast(ctx, c.roomList()))
	return errors.Join(errs...)
}

// members asks DMB who is in room, on every node, and sends the room's
// members their names: the names this backend's clients gave, anon for
// the others (clients of other demo backends, or without a hello).
func (c *chat) members(ctx context.Context, room string) error {
	res, err := c.b.Presence(ctx, room, backend.PresenceOptions{Timeout: presenceTimeout})
	if err != nil {
		return fmt.Errorf("presence of %s: %w", room, err)
	}
	if !res.Complete {
		c.log.Warn("presence incomplete", "room", room, "nodes", res.Nodes)
	}
	if len(res.Members) == 0 {
		return nil // nobody left to tell
	}
	names := make([]string, 0, len(res.Members))
	for _, m := range res.Members {
		name, ok := c.online[m.CID]
		if !ok {
			name = anon
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return c.b.Room(ctx, room, roomMembers{Kind: "members", Room: room, Online: len(names), Names: names})
}

// roomList counts this backend's clients in each room, by room name.
func (c *chat) roomList() roomList {
	count := make(map[string]int)
	for _, rooms := range c.rooms {
		for room := range rooms {
			count[room]++
		}
	}
	list := roomList{Kind: "rooms", Rooms: make([]roomInfo, 0, len(count))}
	for _, room := range slices.Sorted(maps.Keys(count)) {
		list.Rooms = append(list.Rooms, roomInfo{Room: room, Members: count[room]})
	}
	return list
}
