package registry

import (
	"context"
	"slices"
	"time"
)

// prune drops from their services the bkids that have not been live for
// DMB_BACKEND_RETENTION: backends that crashed or left and never came back,
// whose bkids would otherwise pile up in Redis and in every node's liveness
// check. The bkid's record expires after as long again, so a backend that
// does come back within it keeps its bkid. A service that has had no live
// backend for as long, and has no bkid left, leaves the services set: its
// clients then get 4004, as for a service never registered, and a flood of
// registrations of made-up services is gone from Redis and from every
// node's view one retention period later. Every node prunes what it has
// seen dead long enough; the Redis updates are idempotent.
//
// It drops what it prunes from fresh, the view a refresh is about to set.
func (r *Registry) prune(ctx context.Context, fresh map[string]*service) {
	now := time.Now()
	retention := r.cfg.BackendRetention
	var expired []string
	var idle []string // services with no live backend for the retention
	r.mu.Lock()
	stillDead := make(map[string]time.Time, len(r.dead))
	stillIdle := make(map[string]time.Time, len(r.idle))
	// outlived reports whether key has been in since for the retention.
	// Its time carries over to still either way: what is dropped below is
	// gone from the next refresh's view, and what cannot be dropped yet (a
	// service with a younger bkid) keeps its time.
	outlived := func(key string, since, still map[string]time.Time) bool {
		t, ok := since[key]
		if !ok {
			t = now
		}
		still[key] = t
		return now.Sub(t) >= retention
	}
	for name, s := range fresh {
		for _, b := range s.bkids {
			if !slices.Contains(s.live, b) && outlived(b, r.dead, stillDead) {
				expired = append(expired, b)
			}
		}
		if len(s.live) == 0 && outlived(name, r.idle, stillIdle) {
			idle = append(idle, name)
		}
	}
	r.dead, r.idle = stillDead, stillIdle
	r.mu.Unlock()
	if len(expired) == 0 && len(idle) == 0 {
		return
	}
	ch := r.cfg.Channels
	pipe := r.rdb.Pipeline()
	for name, s := range fresh {
		for _, b := range expired {
			if i := slices.Index(s.bkids, b); i >= 0 {
				s.bkids = slices.Delete(s.bkids, i, i+1)
				pipe.SRem(ctx, ch.Key("service", name), b)
				pipe.Expire(ctx, ch.Key("backend", b), retention)
				r.log.Info("backend dropped after retention", "service", name, "bkid", b)
			}
		}
	}
	// After the bkids' removal, in the same pipeline: a service whose set
	// is empty now goes, unless a backend registered it meanwhile.
	var drops []string
	for _, name := range idle {
		if len(fresh[name].bkids) == 0 {
			drops = append(drops, name)
			dropServiceScript.Eval(ctx, pipe, []string{ch.Key("services"), ch.Key("service", name)}, name)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		r.m.RedisErrors.WithLabelValues("prune").Inc()
		r.log.Warn("prune the registry", "err", err)
		return
	}
	r.m.Pruned.WithLabelValues("backend").Add(float64(len(expired)))
	r.mu.Lock()
	for _, b := range expired {
		delete(r.owner, b)
	}
	for _, name := range drops {
		delete(fresh, name)
		delete(r.seen, name)
	}
	r.mu.Unlock()
	for _, name := range drops {
		r.log.Info("service dropped after retention", "service", name)
	}
	r.m.Pruned.WithLabelValues("service").Add(float64(len(drops)))
	if r.watch != nil && len(expired) > 0 {
		r.watch.Unwatch(expired...)
	}
}
