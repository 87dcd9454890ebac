// Package clients_test installs the client libraries as their users do: the
// Python backend library into a fresh virtual environment with pip, the Node
// backend library and dmb.js from the tarballs `npm pack` makes into a
// scratch project. Each installed package must import from outside the
// repository and carry the version in VERSION.
package clients_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dmb-broker/dmb/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run runs argv in dir and returns its standard output; it fails the test
// with the whole output when the command fails.
func run(t *testing.T, dir string, env []string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(argv, " "), err, out, stderr.String())
	}
	return string(out)
}

// version is the release in VERSION at the repository's root.
func version(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func abs(t *testing.T, path string) string {
	t.Helper()
	p, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPythonPackageInstallsWithPip installs clients/python with pip into a
// new virtual environment, without any download (redis-py comes from the
// system's packages), and imports it from elsewhere.
func TestPythonPackageInstallsWithPip(t *testing.T) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("%s is missing (Debian: apt-get install python3 python3-venv python3-setuptools python3-redis): %v", python, err)
	}
	venv := filepath.Join(t.TempDir(), "venv")
	run(t, ".", nil, python, "-m", "venv", "--system-site-packages", venv)
	// A copy, so that pip's build leaves nothing in the repository.
	src := filepath.Join(t.TempDir(), "python")
	run(t, ".", nil, "cp", "-r", abs(t, "python"), src)
	run(t, ".", []string{"PIP_DISABLE_PIP_VERSION_CHECK=1"},
		filepath.Join(venv, "bin", "pip"), "install", "--quiet", "--no-index", "--no-build-isolation", src)

	out := run(t, t.TempDir(), []string{"PYTHONDONTWRITEBYTECODE=1"}, filepath.Join(venv, "bin", "python"), "-c", `
import dmb_backend, sys
from dmb_backend import Backend, RegistrationRefused, mint_token
print(dmb_backend.__version__)
print(dmb_backend.__file__)
print(mint_token("0123456789abcdef0123456789abcdef", "alice", 60).count("."))
`)
	lines := strings.Fields(out)
	if len(lines) != 3 {
		t.Fatalf("output %q, want version, file and 2", out)
	}
	if lines[0] != version(t) {
		t.Errorf("dmb_backend.__version__ = %s, want %s (VERSION)", lines[0], version(t))
	}
	if !strings.HasPrefix(lines[1], venv) {
		t.Errorf("dmb_backend imported from %s, want the virtual environment %s", lines[1], venv)
	}
	if lines[2] != "2" {
		t.Errorf("mint_token made a token with %s dots, want 2", lines[2])
	}
}

// TestNodePackagesInstallFromTheirTarballs packs @dmb/backend and
// @dmb/client with npm, installs the tarballs into a scratch project
// offline, imports both as ES modules and checks that their type
// declarations are where the packages say.
func TestNodePackagesInstallFromTheirTarballs(t *testing.T) {
	if _, err := exec.LookPath("npm"); err != nil {
		t.Fatalf("npm is missing (Debian: apt-get install nodejs npm): %v", err)
	}
	packs := t.TempDir()
	cache := filepath.Join(t.TempDir(), "npm-cache") // nothing from the user's cache
	env := []string{"npm_config_cache=" + cache, "npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false"}
	var tarballs []string
	for _, dir := range []string{"node", "js"} {
		name := strings.TrimSpace(run(t, ".", env, "npm", "pack", "--silent", "--pack-destination", packs, abs(t, dir)))
		tarballs = append(tarballs, filepath.Join(packs, name))
	}

	project := t.TempDir()
	if err := os.WriteFile(filepath.Join(project, "package.json"), []byte(`{"name":"scratch","private":true,"type":"module"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, project, env, append([]string{"npm", "install", "--offline", "--silent"}, tarballs...)...)

	out := run(t, project, nil, "node", "--input-type=module", "-e", `
import { Backend, RegistrationRefused, mintToken } from '@dmb/backend';
import { DMB } from '@dmb/client';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
console.log(typeof Backend, typeof RegistrationRefused, typeof DMB);
console.log(mintToken('0123456789abcdef0123456789abcdef', 'alice', 60).split('.').length);
console.log(require('@dmb/backend/package.json').version, require('@dmb/client/package.json').version);
`)
	want := "function function function\n3\n" + version(t) + " " + version(t) + "\n"
	if out != want {
		t.Fatalf("imports printed\n%s\nwant\n%s", out, want)
	}

	for pkg, exports := range map[string][]string{
		"@dmb/backend": {"class Backend", "class RegistrationRefused", "function mintToken"},
		"@dmb/client":  {"class DMB"},
	} {
		dir := filepath.Join(project, "node_modules", filepath.FromSlash(pkg))
		var manifest struct {
			Types   string `json:"types"`
			Exports struct {
				Root struct {
					Types   string `json:"types"`
					Default string `json:"default"`
				} `json:"."`
			} `json:"exports"`
		}
		b, err := os.ReadFile(filepath.Join(dir, "package.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &manifest); err != nil {
			t.Fatalf("%s package.json: %v", pkg, err)
		}
		types := manifest.Exports.Root.Types
		if types == "" || types != manifest.Types {
			t.Fatalf("%s: exports types %q, types %q: want one declaration file for both", pkg, types, manifest.Types)
		}
		decl, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(types)))
		if err != nil {
			t.Fatalf("%s: the declarations it names are not in the tarball: %v", pkg, err)
		}
		for _, e := range exports {
			if !strings.Contains(string(decl), "export "+e) && !strings.Contains(string(decl), "export declare "+e) {
				t.Errorf("%s: %s does not declare %q", pkg, types, e)
			}
		}
	}
}

// A backend pointed at a Redis where no DMB node listens is told so, with
// what to check, instead of waiting for an answer that cannot come.
func TestLibrariesSayWhenNoDMBNodeListens(t *testing.T) {
	rs := redistest.Start(t) // a Redis, and no DMB on it
	const want = "no DMB node listens on dmb:register of this Redis: start DMB, or point this backend at the Redis " +
		"DMB uses (`dmb -dev` logs the address of its embedded Redis) with the same DMB_PREFIX"
	t.Run("python", func(t *testing.T) {
		out := run(t, t.TempDir(), []string{"PYTHONPATH=" + abs(t, "python"), "PYTHONDONTWRITEBYTECODE=1"}, "/usr/bin/python3", "-c", `
import sys, redis
from dmb_backend import Backend
b = Backend(redis.Redis(host="127.0.0.1", port=int(sys.argv[1])), "echo")
try:
    b.register()
except TimeoutError as e:
    print(e)
`, strconv.Itoa(rs.Port()))
		if strings.TrimSpace(out) != want {
			t.Fatalf("register() said %q, want %q", out, want)
		}
	})
	t.Run("node", func(t *testing.T) {
		out := run(t, "..", nil, "node", "--input-type=module", "-e", `
import { createClient } from 'redis';
import { Backend } from '@dmb/backend';
const client = createClient({ socket: { host: '127.0.0.1', port: Number(process.argv[1]) } });
const b = new Backend(client, 'echo', { logger: { info() {}, warn() {}, error() {} } });
try { await b.register(); } catch (err) { console.log(err.message); }
process.exit(0); // the library's subscriber connection would keep Node running
`, strconv.Itoa(rs.Port()))
		if strings.TrimSpace(out) != want {
			t.Fatalf("register() said %q, want %q", out, want)
		}
	})
}
