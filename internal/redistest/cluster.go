package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of real redis-server processes on loopback,
// each master with its replicas, formed with redis-cli --cluster create.
// Failover is quick (cluster-node-timeout 1 s), so that a test can kill a
// master and see its replica take over.
type Cluster struct {
	t     testing.TB
	Nodes []*Server
}

// clusterCreateTimeout bounds redis-cli --cluster create.
const clusterCreateTimeout = time.Minute

// StartCluster starts masters × (1 + replicas) servers, forms the cluster
// and waits until every slot is served and every replica is in sync.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli not found (apt-get install redis-tools): %v", err)
	}
	dir := t.TempDir()
	c := &Cluster{t: t}
	var addrs []string
	for i := range masters * (1 + replicas) {
		s := startNew(t, func() *Server {
			return &Server{t: t, port: FreePort(t), args: []string{"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", i)),
				"--cluster-node-timeout", "1000", "--dir", dir,
				// The bus port is the port + 10000 unless told: that one may
				// be taken, or past 65535.
				"--cluster-port", strconv.Itoa(FreePort(t))}}
		})
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	// redis-cli waits for the nodes to agree for as long as it takes.
	ctx, cancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy()
	return c
}

// Addrs are every node's host:port.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, s := range c.Nodes {
		out = append(out, s.Addr())
	}
	return out
}

// Client returns a cluster client, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// MasterOf returns the node that serves key's slot as a master now.
func (c *Cluster) MasterOf(key string) *Server {
	c.t.Helper()
	m := c.masterOf(key)
	if m == nil {
		c.t.Fatalf("no node of the cluster serves %q", key)
	}
	return m
}

// masterOf asks the live nodes which one serves key's slot; nil when it
// is none of them or they cannot tell.
func (c *Cluster) masterOf(key string) *Server {
	var live []string
	for _, s := range c.Nodes {
		if s.Running() {
			live = append(live, s.Addr())
		}
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: live, MaxRetries: -1})
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := cc.MasterForKey(ctx, key)
	if err != nil {
		return nil
	}
	for _, s := range c.Nodes {
		if s.Addr() == m.Options().Addr {
			return s
		}
	}
	return nil
}

// WaitHealthy waits until every live node sees the cluster as ok, every
// slot served, and every live replica in sync with its master.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, "a healthy cluster", func(ctx context.Context) error {
		for _, s := range c.Nodes {
			if !s.Running() {
				continue
			}
			rdb := s.tempClient()
			info, err := rdb.ClusterInfo(ctx).Result()
			if err != nil {
				rdb.Close()
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
				rdb.Close()
				return fmt.Errorf("%s: %s", s, firstLine(info, "cluster_state"))
			}
			repl, err := rdb.Info(ctx, "replication").Result()
			rdb.Close()
			if err != nil {
				return err
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return fmt.Errorf("%s: replica not in sync", s)
			}
		}
		return nil
	})
}

// Sentinel is a master, its replica and three sentinels, all real
// redis-server processes on loopback. The sentinels declare the master
// down after 1 s, so that a test can kill it and see the replica promoted.
type Sentinel struct {
	t         testing.TB
	Name      string
	Master    *Server
	Replica   *Server
	Sentinels []*Server
}

// StartSentinel starts the five processes and waits until the sentinels
// know the replica and one another.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	st := &Sentinel{t: t, Name: "dmb-test"}
	st.Master = Start(t)
	st.Replica = Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(st.Master.port))
	dir := t.TempDir()
	for i := range 3 {
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", i))
		body := fmt.Sprintf("dir %s\nsentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %[2]s 1000\nsentinel failover-timeout %[2]s 5000\n",
			dir, st.Name, st.Master.port)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		s := startNew(t, func() *Server { return &Server{t: t, port: FreePort(t), conf: conf} })
		st.Sentinels = append(st.Sentinels, s)
	}
	waitFor(t, 30*time.Second, "sentinels that know the replica and each other", func(ctx context.Context) error {
		for _, s := range st.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr()})
			replicas, err := c.Replicas(ctx, st.Name).Result()
			if err == nil && len(replicas) == 0 {
				err = fmt.Errorf("%s knows no replica", s)
			}
			if err == nil {
				var peers []map[string]string
				if peers, err = c.Sentinels(ctx, st.Name).Result(); err == nil && len(peers) < 2 {
					err = fmt.Errorf("%s knows %d other sentinels", s, len(peers))
				}
			}
			_ = c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	return st
}

// Addrs are the sentinels' host:port.
func (st *Sentinel) Addrs() []string {
	var out []string
	for _, s := range st.Sentinels {
		out = append(out, s.Addr())
	}
	return out
}

// Client returns a failover client, closed when the test ends.
func (st *Sentinel) Client() *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: st.Name, SentinelAddrs: st.Addrs()})
	st.t.Cleanup(func() { _ = c.Close() })
	return c
}

// WaitPromoted waits until the sentinels name the replica as the master.
func (st *Sentinel) WaitPromoted() {
	st.t.Helper()
	want := st.Replica.Addr()
	waitFor(st.t, 30*time.Second, "the replica promoted", func(ctx context.Context) error {
		for _, s := range st.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr()})
			addr, err := c.GetMasterAddrByName(ctx, st.Name).Result()
			_ = c.Close()
			if err != nil {
				return err
			}
			if got := strings.Join(addr, ":"); got != want {
				return fmt.Errorf("%s names %s", s, got)
			}
		}
		return nil
	})
}

// Running reports whether the process runs (it was not killed).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// tempClient returns a client the caller closes.
func (s *Server) tempClient() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
}

// waitFor polls check until it succeeds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, check func(context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		<-tick.C
	}
}

func firstLine(info, prefix string) string {
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// FailMaster kills the master that serves key's slot and waits until its
// replica has taken the slot over and the cluster is healthy again. It
// returns the killed server.
func (c *Cluster) FailMaster(key string) *Server {
	c.t.Helper()
	old := c.MasterOf(key)
	old.Kill()
	waitFor(c.t, 30*time.Second, "a replica to take over "+old.String(), func(context.Context) error {
		if m := c.masterOf(key); m == nil || m == old {
			return fmt.Errorf("the slot of %q is still on %s", key, old)
		}
		return nil
	})
	c.WaitHealthy()
	return old
}
