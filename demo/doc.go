// Package demo is a small chat that shows DMB end to end. Run is the backend:
// it registers the service "chat" through package backend, broadcasts every
// chat line to all clients and answers each with a direct echo that carries
// its id back as reply_to, keeps the name each client gives in a hello and
// broadcasts who is online (names, sorted) whenever a client comes, goes or
// renames itself, and answers a time request with its clock. Page serves
// the one HTML page that a browser loads to talk to it over DMB's WebSocket
// endpoint /ws/chat, and dmb.js, the client that the page imports.
//
// Messages from clients are JSON objects told apart by "kind":
//
//	{"kind":"hello","name":"bob"}          -> broadcast {"kind":"presence","online":2,"names":["amy","bob"]}
//	{"kind":"chat","name":"bob","text":"hi"} (or no kind)
//	                                       -> broadcast {"kind":"chat","name":"bob","text":"hi"}
//	                                          and direct {"kind":"echo","data":...} to the sender
//	{"kind":"time"}                        -> direct {"kind":"time","now":"2030-01-02T03:04:05Z"}
//	{"kind":"rooms"}                       -> direct {"kind":"rooms","rooms":[{"room":"lobby","members":2}]}
//	{"join":"lobby"}                       -> join command, then room "lobby" {"kind":"members","room":"lobby","online":2,"names":["amy","bob"]},
//	                                          broadcast {"kind":"rooms",...} and direct {"kind":"joined","room":"lobby"}
//	{"leave":"lobby"}                      -> the same with a leave command and {"kind":"left",...}
//	{"say":"hi","room":"lobby"}            -> room "lobby" {"kind":"chat","room":"lobby","name":"bob","text":"hi"}
//	                                          and direct {"kind":"echo","data":...} to the sender
//	anything else                          -> direct {"kind":"error","error":"..."}
//
// Presence is also broadcast when a client connects (as "anon" until its
// hello) or disconnects. It lists the clients of this backend only: with
// several demo backends, each knows its own.
//
// Rooms go through DMB (protocol, section 10): the backend joins a client
// to a room and sends a line to the room once, and DMB delivers it to every
// member on every node; nobody outside the room gets it. Who is in a room
// comes from DMB's presence, sent to the room's members whenever someone
// joins, leaves or disconnects (names of clients of other demo backends
// show as "anon"). The room list counts this backend's clients in each
// room. A client says something in a room only once it is in it, and is in
// at most 10 rooms.
//
// The backend talks only to Redis, like any backend written in any language;
// it never imports DMB's broker. The page loads nothing from other origins:
// its script and style are inline, and it imports dmb.js from its own.
package demo
