// Package browser_test drives the demo page in a real browser (Debian's
// Chromium through playwright-core): two pages chat through DMB and the demo
// backend, then in a room a third page is not in, a page's request() gets
// its reply, a page whose WebSockets are refused chats over the HTTP
// fallback (an event stream and POSTs), DMB restarts mid-session and the
// pages resume their sessions by themselves (same cid, same rooms, the
// fallback's page on the fallback) with what the backend said meanwhile,
// and a page with a bad token sees the auth failure. The scenario is
// browser/chat.mjs; this test runs the real parts around it and restarts
// DMB when the script asks.
package browser_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/backend"
	"github.com/dmb-broker/dmb/demo"
	"github.com/dmb-broker/dmb/history"
	"github.com/dmb-broker/dmb/internal/nodetest"
	"github.com/dmb-broker/dmb/internal/proctest"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/node"
)

func TestMain(m *testing.M) { nodetest.Main(m) }

const jwtSecret = "browser-test-secret-0123456789abcdef"

// startNode runs a DMB node serving the demo page on a fixed port, so
// that a restarted node comes back where the pages reconnect to.
func startNode(t *testing.T, r *redistest.Server, port int, secret string) *nodetest.Node {
	t.Helper()
	cfg := nodetest.Config(t, r)
	cfg.Port = port
	cfg.JWTSecret = secret
	var ln net.Listener
	// The port of a node that just stopped may take a moment to free.
	nodetest.Eventually(t, fmt.Sprintf("port %d free", port), func() bool {
		var err error
		ln, err = net.Listen("tcp", cfg.Addr())
		return err == nil
	})
	return nodetest.Start(t, cfg, node.Options{Listener: ln, Root: demo.Page()})
}

func TestChatInARealBrowser(t *testing.T) {
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("chromium not installed (apt-get install chromium): %v", err)
	}
	if _, err := os.Stat("../node_modules/playwright-core"); err != nil {
		t.Fatalf("playwright-core not installed (npm ci at the repo root): %v", err)
	}
	artifacts := os.Getenv("DMB_ARTIFACTS")
	if artifacts == "" {
		artifacts = "artifacts"
	}
	artifacts, _ = filepath.Abs(artifacts)
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}

	r := redistest.Start(t)
	port, authPort := redistest.FreePort(t), redistest.FreePort(t)
	n := startNode(t, r, port, "")
	startNode(t, r, authPort, jwtSecret)

	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	ctx, stopDemo := context.WithCancel(context.Background())
	demoDone := make(chan error, 1)
	go func() { demoDone <- demo.Run(ctx, rdb, backend.Options{Logger: nodetest.Logger()}) }()
	defer func() { stopDemo(); <-demoDone }()

	cmd := exec.Command("node", "chat.mjs")
	proctest.DieWithTest(cmd)
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("DMB_URL=http://127.0.0.1:%d", port),
		fmt.Sprintf("DMB_AUTH_URL=http://127.0.0.1:%d", authPort),
		"DMB_ARTIFACTS="+artifacts,
		"CHROMIUM="+chromium,
	)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := time.AfterFunc(3*time.Minute, func() { _ = cmd.Process.Kill() })
	defer killed.Stop()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		t.Log(line)
		if line == "RESTART" {
			// DMB goes away (1001) and comes back on the same port; the
			// pages must reconnect by themselves.
			if err := n.Stop(); err != nil {
				t.Fatalf("stop: %v", err)
			}
			// The demo backend says something while DMB is down,
			// recoverably: the pages get it when they resume.
			bkids, err := rdb.SMembers(ctx, "{dmb}:service:chat").Result()
			if err != nil || len(bkids) != 1 {
				t.Fatalf("the demo's bkid: %v %v", bkids, err)
			}
			line := `{"type":"broadcast","data":{"kind":"chat","name":"system","text":"said while DMB restarted"}}`
			if err := rdb.FCall(ctx, history.Function, []string{"dmb:" + bkids[0]}, line).Err(); err != nil {
				t.Fatalf("publish while DMB is down: %v", err)
			}
			n = startNode(t, r, port, "")
			if _, err := io.WriteString(stdin, "OK\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("browser scenario failed: %v\n%s", err, stderr.String())
	}
	for _, shot := range []string{"chat.png", "rooms.png", "fallback.png", "after-restart.png", "bad-token.png"} {
		if fi, err := os.Stat(filepath.Join(artifacts, shot)); err != nil || fi.Size() == 0 {
			t.Errorf("screenshot %s missing: %v", shot, err)
		}
	}
}
