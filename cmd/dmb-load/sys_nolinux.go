//go:build !linux

package main

import "syscall"

// bindNoPort: only Linux defers the choice of the source port to connect.
func bindNoPort(syscall.RawConn) error { return nil }
