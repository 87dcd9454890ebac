package node

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/dmb-broker/dmb/broker"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/registry"
)

// AdminStats is what GET /stats on the admin listener returns.
type AdminStats struct {
	Node          string                       `json:"node"`
	Version       string                       `json:"version"`
	UptimeSeconds float64                      `json:"uptime_seconds"`
	Ready         bool                         `json:"ready"`
	Draining      bool                         `json:"draining"`
	LogLevel      string                       `json:"log_level"`
	Clients       broker.Stats                 `json:"clients"`
	Backends      map[string]registry.Backends `json:"backends"`
}

// adminBodyLimit bounds the JSON body of a state-changing admin call.
const adminBodyLimit = 4 << 10

// adminHandler is the operator's console, served on DMB_ADMIN_ADDR only,
// behind DMB_ADMIN_TOKEN when one is set:
//
//	GET  /stats                     node stats as JSON
//	GET  /loglevel                  the log level
//	PUT  /loglevel                  set it: {"level":"debug"} (debug, info, warn or error)
//	POST /clients/{cid}/disconnect  close a client: {"code":4000,"reason":"bye"} (both optional; default 1008)
//	POST /drain                     close every client with 1001, then stop the node: {}
//	GET  /debug/pprof/...           Go profiles, only when DMB_ADMIN_TOKEN is set
//
// A web page the operator has open must not be able to use it (see
// adminGuard): the calls that change anything take a JSON body with
// Content-Type application/json, which no cross-site form can send and a
// cross-site script may send only after a CORS preflight that this listener
// never answers.
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, AdminStats{
			Node:          n.cfg.NodeID,
			Version:       n.version,
			UptimeSeconds: time.Since(n.started).Seconds(),
			Ready:         n.Ready(r.Context()),
			Draining:      n.draining(),
			LogLevel:      n.level.Level().String(),
			Clients:       n.brk.Stats(),
			Backends:      n.reg.Snapshot(),
		})
	})
	mux.HandleFunc("GET /loglevel", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, strings.ToLower(n.level.Level().String())+"\n")
	})
	mux.HandleFunc("PUT /loglevel", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Level string `json:"level"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(req.Level)); err != nil {
			http.Error(w, `level must be "debug", "info", "warn" or "error"`, http.StatusBadRequest)
			return
		}
		n.level.Set(lv)
		n.log.Info("log level changed", "level", lv.String())
		_, _ = io.WriteString(w, strings.ToLower(lv.String())+"\n")
	})
	mux.HandleFunc("POST /clients/{cid}/disconnect", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		code := protocol.ClosePolicy
		if req.Code != 0 {
			if !sendableCloseCode(req.Code) {
				http.Error(w, "code must be 1000, 1001, 1008, 1011 or 3000-4999", http.StatusBadRequest)
				return
			}
			code = req.Code
		}
		if req.Reason == "" {
			req.Reason = "disconnected by operator"
		}
		if !n.brk.Close(r.PathValue("cid"), code, req.Reason) {
			http.Error(w, "no such client on this node", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		var req struct{}
		if !readJSON(w, r, &req) {
			return
		}
		n.log.Info("drain requested")
		n.Drain()
		w.WriteHeader(http.StatusAccepted)
	})
	if n.cfg.AdminToken != "" {
		// Profiles show memory contents and cost CPU: never without a token.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return n.adminGuard(mux)
}

// adminGuard refuses what a browser could send on behalf of a web page:
//
//   - a Host that is not a loopback name or address, the listener's own
//     address, or a name of DMB_ADMIN_HOSTS (403): a page whose name an
//     attacker re-binds to this machine's address sends its own name;
//   - an Origin other than the listener's own, or Sec-Fetch-Site other than
//     same-origin or none (403): a cross-site request says where it comes
//     from;
//   - without Authorization: Bearer DMB_ADMIN_TOKEN, when one is set (401).
func (n *Node) adminGuard(next http.Handler) http.Handler {
	hosts := adminHosts(n.adminLn.Addr(), n.cfg.AdminHosts)
	want := []byte("Bearer " + n.cfg.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts.allow(r.Host) {
			n.m.AdminRefused.WithLabelValues("host").Inc()
			n.log.Debug("admin request refused", "reason", "host", "host", r.Host)
			http.Error(w, "host not allowed", http.StatusForbidden)
			return
		}
		if !sameOrigin(r) {
			n.m.AdminRefused.WithLabelValues("origin").Inc()
			n.log.Debug("admin request refused", "reason", "origin", "origin", r.Header.Get("Origin"))
			http.Error(w, "cross-origin request refused", http.StatusForbidden)
			return
		}
		if n.cfg.AdminToken != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			n.m.AdminRefused.WithLabelValues("token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="dmb-admin"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allowedHosts are the host names the admin listener answers to.
type allowedHosts struct {
	names map[string]bool // lower case, without port
	addrs map[netip.Addr]bool
}

// adminHosts allows loopback names and addresses, the listener's own
// address when it is a specific one, and the configured names.
func adminHosts(ln net.Addr, configured []string) allowedHosts {
	h := allowedHosts{names: map[string]bool{"localhost": true}, addrs: map[netip.Addr]bool{}}
	if ap, err := netip.ParseAddrPort(ln.String()); err == nil && !ap.Addr().IsUnspecified() {
		h.addrs[ap.Addr().Unmap()] = true
	}
	for _, s := range configured {
		s = strings.ToLower(strings.TrimSpace(s))
		if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			h.addrs[a.Unmap()] = true
		} else if s != "" {
			h.names[s] = true
		}
	}
	return h
}

// allow reports whether a request's Host header names this listener. The
// port is not compared: a proxy or a port mapping may change it, and a
// page re-bound to this address gives itself away by its name.
func (h allowedHosts) allow(host string) bool {
	name := host
	if hn, _, err := net.SplitHostPort(host); err == nil {
		name = hn
	}
	name = strings.ToLower(strings.Trim(name, "[]"))
	if a, err := netip.ParseAddr(name); err == nil {
		a = a.Unmap()
		return a.IsLoopback() || h.addrs[a]
	}
	return h.names[strings.TrimSuffix(name, ".")]
}

// sameOrigin reports whether a request does not come from another site's
// page: tools such as curl send neither header, a browser sends
// Sec-Fetch-Site, and Origin on every request that is not a plain
// navigation.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Scheme == "http" && strings.EqualFold(u.Host, r.Host)
}

// readJSON decodes a state-changing call's body, a JSON object, into v; on
// failure it answers the request and returns false.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return false
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, adminBodyLimit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		http.Error(w, fmt.Sprintf("body must be a JSON object: %v", err), http.StatusBadRequest)
		return false
	}
	return true
}

// sendableCloseCode reports whether an operator may close a client with
// code: the codes a server sends for its own reasons, or an application
// code (1005, 1006 and 1015 never appear in a close frame).
func sendableCloseCode(c int) bool {
	switch c {
	case 1000, 1001, 1008, 1011:
		return true
	}
	return c >= 3000 && c <= 4999
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
