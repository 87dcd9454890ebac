//go:build unix

package broker

// rawSockets tells whether a socket's descriptor can be read and written
// with plain system calls (rawfd_linux.go, rawfd_posix.go), for the small
// reads (corkConn.fill) and the writes that must not wait
// (corkConn.writeNow).
const rawSockets = true
