package broker

// The broker frames the data frames of a plain connection itself, instead
// of letting the WebSocket library frame them one client at a time: a
// broadcast is framed once and the same bytes are written to every client
// (see Broker.Broadcast), and a writer frames a batch straight into the
// buffer it writes (wsframe.AppendText). The library still writes its
// control frames (pong, close) and reads; corkConn keeps both kinds of
// write in order.

// isCloseFrame tells whether p, one write of the WebSocket library to a
// plain connection, is a close frame: the library writes each control frame
// whole in one write (see leanWriter), so its first byte is the frame's.
func isCloseFrame(p []byte) bool {
	const finClose = 0x80 | 0x8
	return len(p) >= 2 && p[0] == finClose
}
