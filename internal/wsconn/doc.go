// Package wsconn owns the WebSocket connections of DMB's clients: it
// accepts them, reads their frames, and writes DMB's frames in batches and,
// where the socket allows, without waiting. It knows nothing of sessions,
// queues or the protocol's frames beyond the close codes it reports; the
// broker drives it through its Transport interface.
//
// # Layers
//
// A connection that comes through Listen is a netConn: the socket, with a
// write batch that can be corked, the tail of a write that could not wait,
// and small reads that hold a buffer only while bytes wait. The WebSocket
// library (coder/websocket) runs on top of it. Accept chooses, once per
// connection, how a batch of frames is written:
//
//   - framed: a plain connection through Listen. DMB frames its data frames
//     itself and writes a batch in one system call; the library writes only
//     its control frames (pong, close), each whole. Such a connection can
//     also be written to without waiting (TryWrite, TryWriteMany), which is
//     how the fan-out and the broker's flushers reach most clients.
//   - corked: TLS over a connection through Listen. The library frames and
//     encrypts; the netConn beneath is corked around a batch, so that the
//     batch still leaves in one write.
//   - library: a connection that did not come through Listen. Each frame is
//     written by the library, bounded by the write timeout.
//
// # Lock order
//
// A netConn's fields are grouped by the state they belong to, each group
// with its lock. Locks are taken in this order, never the other way:
//
//	library's write lock (coder/websocket, held while it writes a frame)
//	  -> netConn.mu    (write state: batch, tail, close frame sent)
//	       -> netConn.fdMu (close state: the descriptor, read-held by an inline write)
//
//	netConn.brMu (the library's reader, for awaitInput) is taken and released
//	  before netConn.rmu (read state: the read buffer); they never nest.
//
// netConn.mu and netConn.rmu are held across the socket write and read on
// purpose: bytes must leave in the order they were produced (TLS records
// are numbered), and two readers of one socket take turns anyway. A write
// that must not wait (TryWrite, TryWriteMany) only tries mu, and never
// waits for a write in progress. Functions that expect a lock held say so
// in their name (Locked: mu) or their comment.
//
// Platform-specific code (the descriptor's system calls) is in the fd_*.go
// files; the rest of DMB never imports syscall or unsafe.
package wsconn
