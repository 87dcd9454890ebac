package redistest

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFreePortIsBelowTheEphemeralRange(t *testing.T) {
	lo, hi := fixedPorts()
	if hi <= lo {
		t.Skipf("the ephemeral range starts at %d: FreePort leaves the choice to the kernel", hi)
	}
	for range 20 {
		if p := FreePort(t); p < lo || p >= hi {
			t.Fatalf("port %d, want one in [%d, %d)", p, lo, hi)
		}
	}
}

func TestAServerAnsweringOnThePortIsNotTakenForOurs(t *testing.T) {
	first := Start(t)
	second := &Server{t: t, port: first.Port()}
	err := second.launch()
	if !errors.Is(err, errPortTaken) {
		t.Fatalf("launch on a port another redis-server has: %v, want errPortTaken", err)
	}
	if second.Running() {
		t.Error("the second server still counts as running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := first.Client().Ping(ctx).Err(); err != nil {
		t.Errorf("the first server: %v", err)
	}
}

func TestStartTriesAnotherPortWhenOneIsTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	var ports []int
	s := startNew(t, func() *Server {
		p := FreePort(t)
		if len(ports) == 0 {
			p = taken
		}
		ports = append(ports, p)
		return &Server{t: t, port: p}
	})
	if len(ports) != 2 || s.Port() != ports[1] || s.Port() == taken {
		t.Fatalf("ports tried %v, server on %d; want the taken port %d, then another", ports, s.Port(), taken)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Errorf("server on %s: %v", strconv.Itoa(s.Port()), err)
	}
}

// A replica writes the RDB it syncs from its master into its working
// directory: that is the server's own, never the test's.
func TestAReplicaWritesNothingIntoTheTestsDirectory(t *testing.T) {
	master := Start(t)
	replica := Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port()))
	rc := replica.Client()
	waitFor(t, 30*time.Second, "the replica in sync", func(ctx context.Context) error {
		info, err := rc.Info(ctx, "replication").Result()
		if err == nil && !strings.Contains(info, "master_link_status:up") {
			err = errors.New("link not up")
		}
		return err
	})
	if _, err := os.Stat(filepath.Join(replica.dir, "dump.rdb")); err != nil {
		t.Fatalf("the replica's synced RDB: %v", err)
	}
	if _, err := os.Stat("dump.rdb"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dump.rdb in the test's directory: %v", err)
	}
}
