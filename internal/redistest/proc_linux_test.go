package redistest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// helperEnv makes the test binary a process that starts a server, prints its
// port and exits without cleaning up, as a test that panics or times out.
const helperEnv = "REDISTEST_HELPER_ABANDON"

func TestHelperAbandonsItsServer(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("run by TestAServerDiesWithItsTestProcess")
	}
	s := Start(t)
	fmt.Println("port", s.Port())
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
	port := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "port "); ok {
			port, _ = strconv.Atoi(p)
		}
	}
	if err := cmd.Wait(); err != nil || port == 0 {
		t.Fatalf("helper: %v, port %d", err, port)
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond})
	defer c.Close()
	waitFor(t, 10*time.Second, "the abandoned server gone", func(ctx context.Context) error {
		if err := c.Ping(ctx).Err(); err == nil {
			return fmt.Errorf("redis-server on port %d still answers", port)
		}
		return nil
	})
}
