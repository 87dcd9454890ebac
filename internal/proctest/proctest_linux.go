// Package proctest is for tests that run other programs: servers, proxies,
// browsers, example backends.
package proctest

import (
	"os/exec"
	"syscall"
)

// DieWithTest has the kernel kill cmd's process when the test process ends
// without cleaning up (a panic, a timeout, a signal), so that nothing is
// left running and holding its port. Call it after setting any other
// SysProcAttr field and before Start. Only the process itself is killed,
// not processes it started: run servers as one process.
//
// The kernel sends the signal when the thread that started the process
// ends (go.dev/issue/27505). The Go runtime ends a thread only when a
// goroutine locked to it (runtime.LockOSThread) returns, which no test
// here does.
func DieWithTest(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
