//go:build !linux

package redistest

import "os/exec"

// dieWithTest: only Linux kills a child when its parent dies.
func dieWithTest(*exec.Cmd) {}
