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
// SysProcAttr field and before Start.
func DieWithTest(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
