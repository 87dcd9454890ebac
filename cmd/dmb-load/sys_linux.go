//go:build linux

package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindNoPort lets connect choose the source port of a socket bound to a
// source address, instead of bind: bind must find a port free for every
// destination, connect only one free towards the destination it dials,
// so the search is shorter and a source address is not limited to one
// connection per port across destinations.
func bindNoPort(c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
