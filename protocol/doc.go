// Package protocol holds the wire contract of DMB version 1: the JSON frames
// exchanged with browsers over WebSocket, the payloads exchanged with backends
// over Redis pub/sub, the channel names, the validation of names and ids, and
// the WebSocket close codes.
//
// Everything a peer sends is decoded and validated here, so that the rest of
// DMB handles only well-formed values. Encoders build outgoing frames by
// appending to a byte slice: peer-supplied "data", "id" and "reply_to" values
// are carried through byte for byte. The package uses the standard library
// only and does no I/O.
package protocol
