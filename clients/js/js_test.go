package dmbjs_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestDMBJS runs dmb.js's own tests (test/*.test.js) with Node's test
// runner, so that `go test ./...` covers the client too. They need node and
// the ws package from the repository root's node_modules.
func TestDMBJS(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: dmb.js's tests need Node.js 20 or later, then `npm ci` at the repo root")
	}
	if _, err := os.Stat(filepath.Join("..", "..", "node_modules", "ws", "package.json")); err != nil {
		t.Fatalf("../../node_modules/ws is missing (%v): run npm ci at the repo root", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The package directory is the working directory of go test.
	cmd := exec.CommandContext(ctx, node, "--test", "test/")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("node --test test/ did not finish in time:\n%s", out)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("node --test test/ failed (%v):\n%s", err, out)
	}
	if err != nil {
		t.Fatalf("run node: %v", err)
	}
	if testing.Verbose() {
		t.Logf("node --test test/:\n%s", out)
	}
}
