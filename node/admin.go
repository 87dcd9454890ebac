package node

import (
	"crypto/subtle"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/broker"
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

// adminHandler is the operator's console, served on DMB_ADMIN_ADDR only,
// behind DMB_ADMIN_TOKEN when one is set:
//
//	GET  /stats                     node stats as JSON
//	GET  /loglevel                  the log level
//	PUT  /loglevel                  set it: body debug, info, warn or error
//	POST /clients/{cid}/disconnect  close a client (?code=4xxx&reason=...; default 1008)
//	POST /drain                     close every client with 1001, then stop the node
//	GET  /debug/pprof/...           Go profiles
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
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64))
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(strings.TrimSpace(string(body)))); err != nil {
			http.Error(w, "level must be debug, info, warn or error", http.StatusBadRequest)
			return
		}
		n.level.Set(lv)
		n.log.Info("log level changed", "level", lv.String())
		_, _ = io.WriteString(w, strings.ToLower(lv.String())+"\n")
	})
	mux.HandleFunc("POST /clients/{cid}/disconnect", func(w http.ResponseWriter, r *http.Request) {
		code := websocket.StatusPolicyViolation
		if s := r.URL.Query().Get("code"); s != "" {
			c, err := strconv.Atoi(s)
			if err != nil || !sendableCloseCode(c) {
				http.Error(w, "code must be 1000, 1001, 1008, 1011 or 3000-4999", http.StatusBadRequest)
				return
			}
			code = websocket.StatusCode(c)
		}
		reason := r.URL.Query().Get("reason")
		if reason == "" {
			reason = "disconnected by operator"
		}
		if !n.brk.Close(r.PathValue("cid"), code, reason) {
			http.Error(w, "no such client on this node", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, _ *http.Request) {
		n.log.Info("drain requested")
		n.Drain()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	if n.cfg.AdminToken == "" {
		return mux
	}
	want := "Bearer " + n.cfg.AdminToken
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="dmb-admin"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
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
