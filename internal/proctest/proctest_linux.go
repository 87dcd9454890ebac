package redistest

import (
	"os/exec"
	"syscall"
)

// dieWithTest has the kernel kill the server when the test process ends
// without cleaning up (a panic, a timeout, a signal), so that no server is
// left holding its port.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
