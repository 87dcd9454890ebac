// Package dmbjs serves dmb.js, DMB's browser client, and its TypeScript
// declarations from the files embedded in the binary, so that a page on a
// DMB node (or behind the same proxy) loads it with
// `import { DMB } from "/dmb.js"` and no build step. It owns only the
// serving; the client itself is dmb.js beside this file, tested with Node's
// test runner (see js_test.go).
package dmbjs

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed dmb.js dmb.d.ts
var embedded embed.FS

// file is one served file with its precomputed validator.
type file struct {
	name        string
	contentType string
	body        []byte
	etag        string
}

func newFile(name, contentType string) file {
	body, err := embedded.ReadFile(name)
	if err != nil {
		panic("dmbjs: " + err.Error()) // the go:embed line above guarantees it
	}
	sum := sha256.Sum256(body)
	// A strong ETag: the same bytes, and only they, have the same tag.
	return file{name: name, contentType: contentType, body: body, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
}

// Handler returns the handler of GET and HEAD on "/dmb.js" and "/dmb.d.ts";
// any other path is 404, any other method 405. Responses carry a strong
// ETag and may be cached for an hour; a matching If-None-Match gets 304.
// Mount it at the root of the mux ("/dmb.js", "/dmb.d.ts").
func Handler() http.Handler {
	files := map[string]file{
		"/dmb.js":   newFile("dmb.js", "text/javascript; charset=utf-8"),
		"/dmb.d.ts": newFile("dmb.d.ts", "application/typescript; charset=utf-8"),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.contentType)
		// An hour: a new release reaches browsers within that time, and
		// after it the ETag makes revalidation cost a 304.
		h.Set("Cache-Control", "public, max-age=3600")
		h.Set("ETag", f.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		// ServeContent answers If-None-Match with 304, and ranges.
		http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(f.body))
	})
}
