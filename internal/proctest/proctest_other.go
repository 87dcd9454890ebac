//go:build !linux

// Package proctest is for tests that run other programs: servers, proxies,
// browsers, example backends.
package proctest

import "os/exec"

// DieWithTest: only Linux kills a child when its parent dies.
func DieWithTest(*exec.Cmd) {}
