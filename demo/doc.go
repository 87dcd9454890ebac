// Package demo is a small chat that shows DMB end to end. Run is the backend:
// it registers the service "chat" through package backend, broadcasts every
// chat line to all clients, answers each message with a direct reply that
// carries its id back as reply_to, and broadcasts how many clients are online
// whenever one comes or goes. Page serves the one HTML page that a browser
// loads to talk to it over DMB's WebSocket endpoint /ws/chat.
//
// The backend talks only to Redis, like any backend written in any language;
// it never imports DMB's broker. The page is self-contained: no external
// scripts, styles or fonts.
package demo
