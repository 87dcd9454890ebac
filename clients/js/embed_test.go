package dmbjs_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	dmbjs "github.com/dmb-broker/dmb/clients/js"
)

// get requests path from srv with method and an optional If-None-Match,
// and returns the response with its body read.
func get(t *testing.T, srv *httptest.Server, method, path, etag string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestHandlerServesTheFilesAsTheyAreOnDisk(t *testing.T) {
	srv := httptest.NewServer(dmbjs.Handler())
	defer srv.Close()
	for _, tc := range []struct{ path, file, contentType string }{
		{"/dmb.js", "dmb.js", "text/javascript; charset=utf-8"},
		{"/dmb.d.ts", "dmb.d.ts", "application/typescript; charset=utf-8"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			want, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			res, body := get(t, srv, http.MethodGet, tc.path, "")
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200", res.StatusCode)
			}
			if body != string(want) {
				t.Errorf("body is not %s as on disk (%d bytes, want %d)", tc.file, len(body), len(want))
			}
			if ct := res.Header.Get("Content-Type"); ct != tc.contentType {
				t.Errorf("Content-Type %q, want %q", ct, tc.contentType)
			}
			if cc := res.Header.Get("Cache-Control"); cc != "public, max-age=3600" {
				t.Errorf("Cache-Control %q, want public, max-age=3600", cc)
			}
			if n := res.Header.Get("X-Content-Type-Options"); n != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", n)
			}

			head, headBody := get(t, srv, http.MethodHead, tc.path, "")
			if head.StatusCode != http.StatusOK || headBody != "" {
				t.Errorf("HEAD: status %d with %d bytes of body, want 200 and none", head.StatusCode, len(headBody))
			}
			if head.Header.Get("ETag") != res.Header.Get("ETag") {
				t.Errorf("HEAD ETag %q, GET ETag %q", head.Header.Get("ETag"), res.Header.Get("ETag"))
			}
		})
	}
}

func TestHandlerRevalidatesWithAStrongETag(t *testing.T) {
	srv := httptest.NewServer(dmbjs.Handler())
	defer srv.Close()

	res, _ := get(t, srv, http.MethodGet, "/dmb.js", "")
	etag := res.Header.Get("ETag")
	if len(etag) < 3 || strings.HasPrefix(etag, "W/") || !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) {
		t.Fatalf("ETag %q, want a quoted strong tag", etag)
	}
	res, body := get(t, srv, http.MethodGet, "/dmb.js", etag)
	if res.StatusCode != http.StatusNotModified || body != "" {
		t.Fatalf("status %d with %d bytes for a matching If-None-Match, want 304 and no body", res.StatusCode, len(body))
	}
	if res.Header.Get("ETag") != etag {
		t.Errorf("304 ETag %q, want %q", res.Header.Get("ETag"), etag)
	}
	if res, _ := get(t, srv, http.MethodGet, "/dmb.js", `"something-else"`); res.StatusCode != http.StatusOK {
		t.Errorf("status %d for another ETag, want 200", res.StatusCode)
	}

	// The tag is the content's: each file has its own.
	dts, _ := get(t, srv, http.MethodGet, "/dmb.d.ts", "")
	if dts.Header.Get("ETag") == etag {
		t.Errorf("dmb.js and dmb.d.ts share the ETag %q", etag)
	}
	if res, _ := get(t, srv, http.MethodGet, "/dmb.d.ts", etag); res.StatusCode != http.StatusOK {
		t.Errorf("status %d for dmb.d.ts with dmb.js's ETag, want 200", res.StatusCode)
	}
}

func TestHandlerServesNothingElse(t *testing.T) {
	srv := httptest.NewServer(dmbjs.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/dmb.min.js", http.StatusNotFound},
		{http.MethodGet, "/embed.go", http.StatusNotFound},
		{http.MethodGet, "/package.json", http.StatusNotFound},
		{http.MethodGet, "/dmb.js/", http.StatusNotFound},
		{http.MethodGet, "/test/connection.test.js", http.StatusNotFound},
		{http.MethodPost, "/dmb.js", http.StatusMethodNotAllowed},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			res, _ := get(t, srv, tc.method, tc.path, "")
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tc.status)
			}
			if tc.status == http.StatusMethodNotAllowed && res.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow %q, want GET, HEAD", res.Header.Get("Allow"))
			}
		})
	}
}
