package redistest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// helperEnv makes the test binary a process that starts a server, prints its
// port and exits without cleaning up, as a test that panics or times out.
const helperEnv = "REDISTEST_HELPER_ABANDON"

func TestHelperAbandonsItsServer(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("run by TestAServerDiesWithItsTestProcess")
	}
	s := Start(t)
	fmt.Println("server", s.Port(), s.cmd.Process.Pid)
	os.Exit(0) // no cleanup
}

func TestAServerDiesWithItsTestProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperAbandonsItsServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var port, pid int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "server %d %d", &port, &pid); err == nil {
			break
		}
	}
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil || pid == 0 {
		t.Fatalf("helper: %v, port %d, pid %d", err, port, pid)
	}
	abandoned := &Server{t: t, port: port}
	waitFor(t, 10*time.Second, "the abandoned server gone", func(context.Context) error {
		if abandoned.answers(pid) == nil {
			return fmt.Errorf("redis-server %d on port %d still answers", pid, port)
		}
		return nil
	})
}
