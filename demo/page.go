package demo

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"

	dmbjs "github.com/dmb-broker/dmb/clients/js"
)

//go:embed static/index.html
var indexHTML []byte

// pageCSP lets the page run its own inline script and style, load dmb.js
// from its own origin and open a WebSocket to its host, and nothing else:
// chat lines come from strangers. ('self' in connect-src covers ws: and
// wss: to the same host only in newer browsers, hence ws: wss:.)
const pageCSP = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self' ws: wss:; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Page returns the handler of the demo's chat page: GET or HEAD on "/" serves
// it, "/dmb.js" and "/dmb.d.ts" serve the client it imports (package
// dmbjs), any other path is 404. The page talks to DMB at /ws/chat on the
// host it was loaded from, so mount it on a DMB node or behind the same
// proxy. Serving dmb.js here too lets the page work wherever it is served
// (dmb-demo's DEMO_HTTP_ADDR), as long as the proxy passes /dmb.js to it or
// to a DMB node.
func Page() http.Handler {
	client := dmbjs.Handler()
	sum := sha256.Sum256(indexHTML)
	etag := `"` + hex.EncodeToString(sum[:8]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
		case "/dmb.js", "/dmb.d.ts":
			client.ServeHTTP(w, r)
			return
		default:
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		// no-cache: browsers revalidate with the ETag, so a new build shows
		// at once and an unchanged one costs a 304.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", etag)
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(indexHTML))
	})
}
