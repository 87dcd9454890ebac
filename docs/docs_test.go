// Package docs_test keeps the documentation true to the code and to
// itself: every link inside the repository resolves, nothing links outside
// it by a relative path, the README stays a landing page, and the protocol
// and operations pages list what the code sends and counts. The settings
// table is checked by the config package's tests.
package docs_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// root is the repository's root, from the package directory.
const root = ".."

// markdown lists the documentation files a user reads.
func markdown(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "CHANGELOG.md", "examples/README.md", "clients/js/README.md",
		"clients/python/README.md", "clients/node/README.md"}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		files = append(files, filepath.ToSlash(strings.TrimPrefix(d, root+string(filepath.Separator))))
	}
	return files
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(path)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile("(?m)^#{1,6} (.+)$")
	fenceRE   = regexp.MustCompile("(?ms)^```.*?^```")
)

// anchors returns the anchors GitHub makes of a Markdown file's headings.
func anchors(md string) map[string]bool {
	out := map[string]bool{}
	for _, m := range headingRE.FindAllStringSubmatch(fenceRE.ReplaceAllString(md, ""), -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(m[1])) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		out[b.String()] = true
	}
	return out
}

// Every relative link points at a file of the repository, and at a heading
// of it when it names one; none leaves the repository.
func TestLinksResolveInsideTheRepository(t *testing.T) {
	for _, file := range markdown(t) {
		md := read(t, file)
		for _, m := range linkRE.FindAllStringSubmatch(fenceRE.ReplaceAllString(md, ""), -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			target, anchor, _ := strings.Cut(link, "#")
			path := file
			if target != "" {
				path = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(file), target)))
			}
			if strings.HasPrefix(path, "..") {
				t.Errorf("%s links %s, outside the repository", file, link)
				continue
			}
			info, err := os.Stat(filepath.Join(root, filepath.FromSlash(path)))
			if err != nil {
				t.Errorf("%s links %s: %v", file, link, err)
				continue
			}
			if anchor != "" && !info.IsDir() && strings.HasSuffix(path, ".md") && !anchors(read(t, path))[anchor] {
				t.Errorf("%s links %s: %s has no heading #%s", file, link, path, anchor)
			}
		}
		if strings.Contains(md, "PROTOCOL.md") {
			t.Errorf("%s names PROTOCOL.md: the protocol for users is docs/protocol.md", file)
		}
	}
}

// The README leads: short, the two quick-start commands, the way into docs/.
func TestREADMEIsALandingPage(t *testing.T) {
	readme := read(t, "README.md")
	if n := len(readme); n > 14000 {
		t.Errorf("README.md is %d characters; reference belongs in docs/ (a landing page is about 12k)", n)
	}
	for _, want := range []string{
		"go run . -dev", "bash .ci/run", "(docs/README.md)", "github.com/dmb-broker/dmb/backend",
		"## How DMB compares", "Centrifugo", "Socket.IO", "(docs/protocol.md)", "(LICENSE)",
	} {
		if !strings.Contains(readme, want) {
			t.Errorf("README.md lacks %q", want)
		}
	}
}

// The table of contents lists every page of docs/.
func TestDocsIndexListsEveryPage(t *testing.T) {
	index := read(t, "docs/README.md")
	for _, file := range markdown(t) {
		if name := strings.TrimPrefix(file, "docs/"); name != file && name != "README.md" {
			if !strings.Contains(index, "("+name+")") {
				t.Errorf("docs/README.md does not list %s", name)
			}
		}
	}
}

// constants returns the string or number values of the constants of a Go
// source file whose names match prefix.
func constants(t *testing.T, path, prefix string) map[string]string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*(` + prefix + `\w*)\s*=\s*("[^"]*"|\d+)`)
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(read(t, path), -1) {
		out[m[1]] = strings.Trim(m[2], `"`)
	}
	if len(out) == 0 {
		t.Fatalf("no %s constants in %s", prefix, path)
	}
	return out
}

// Every close code DMB sends is in the protocol's table. 1000 (a client's
// own close) and 1006 (no close frame at all) are codes DMB reports, not
// sends.
func TestProtocolDocListsEveryCloseCode(t *testing.T) {
	doc := read(t, "docs/protocol.md")
	for name, code := range constants(t, "protocol/close.go", "Close") {
		if name == "CloseNormal" || name == "CloseAbnormal" {
			continue
		}
		if !strings.Contains(doc, "\n| "+code+" |") {
			t.Errorf("docs/protocol.md has no row for close code %s (%s)", code, name)
		}
	}
}

// The refusals the registry answers with are the ones the protocol lists,
// and every reason it counts is in the metrics table.
func TestRegistrationRefusalsAreDocumented(t *testing.T) {
	doc, ops := read(t, "docs/protocol.md"), read(t, "docs/operations.md")
	reject := read(t, "registry/reject.go")
	m := regexp.MustCompile(`reusedNonceError = "([^"]+)"`).FindStringSubmatch(reject)
	if m == nil {
		t.Fatal("registry/reject.go: no reusedNonceError")
	}
	for _, nack := range []string{m[1], "invalid service name", "too many services"} {
		if !strings.Contains(doc, "`bk_connect_nack` `"+nack+"`") {
			t.Errorf("docs/protocol.md does not list the nack %q", nack)
		}
	}
	for name, reason := range constants(t, "registry/reject.go", "Reject") {
		if !strings.Contains(ops, "`"+reason+"`") {
			t.Errorf("docs/operations.md does not list the rejection reason %s (%s)", reason, name)
		}
	}
}

// Every series and drop reason of the metrics package is in the operations
// page.
func TestOperationsDocListsEveryMetric(t *testing.T) {
	ops := read(t, "docs/operations.md")
	src := read(t, "metrics/metrics.go")
	for _, m := range regexp.MustCompile(`Name: "([a-z_]+)"`).FindAllStringSubmatch(src, -1) {
		if !strings.Contains(ops, "`dmb_"+m[1]) {
			t.Errorf("docs/operations.md does not list dmb_%s", m[1])
		}
	}
	for name, reason := range constants(t, "metrics/metrics.go", "Drop") {
		if !strings.Contains(ops, "`"+reason+"`") {
			t.Errorf("docs/operations.md does not list the drop reason %s (%s)", reason, name)
		}
	}
}
