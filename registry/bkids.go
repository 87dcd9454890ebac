package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/metrics"
)

// unknownCacheSize bounds how many bkids a node remembers as never issued.
const unknownCacheSize = 10000

// unknownBKIDs remembers the bkids that Redis has no record of although the
// bkid counter has passed them: they were never issued, or were dropped
// after their retention and expired, and the counter never hands them out
// again. A bkid above the counter may yet be issued, so it is never
// remembered; a registration this node handles adds the bkid to the view,
// which ServiceOf reads first. Guarded by Registry.mu.
type unknownBKIDs struct {
	never map[string]struct{}
	// Look-ups of Redis for bkids that are in neither the view nor never:
	// a token bucket of DMB_BKID_LOOKUP_RATE per second, as deep.
	tokens float64
	filled time.Time
}

// takeLookupLocked takes a look-up token; r.mu is held.
func (r *Registry) takeLookupLocked(now time.Time) bool {
	u := &r.unknown
	limit := float64(r.cfg.BKIDLookupRate)
	u.tokens = min(limit, u.tokens+now.Sub(u.filled).Seconds()*limit)
	u.filled = now
	if u.tokens < 1 {
		return false
	}
	u.tokens--
	return true
}

// rememberUnknownLocked adds a bkid to never, making room when it is full;
// r.mu is held.
func (r *Registry) rememberUnknownLocked(bkid string) {
	u := &r.unknown
	if len(u.never) >= unknownCacheSize {
		// Forget an eighth, whichever the map yields first: a flood of
		// distinct bkids costs look-ups at the budget's pace, never memory.
		n := unknownCacheSize / 8
		for b := range u.never {
			delete(u.never, b)
			if n--; n == 0 {
				break
			}
		}
	}
	u.never[bkid] = struct{}{}
}

// ServiceOf returns the service a bkid was issued to, from the view or, the
// first time, from Redis. The mapping never changes, so it is cached for
// good. A bkid Redis does not know costs one look-up: when it is below the
// bkid counter it is remembered as unknown, and look-ups of bkids outside
// the view are limited to DMB_BKID_LOOKUP_RATE per second, so that a flood
// of publishes on made-up downlink channels, or of forged leaves, costs
// Redis a bounded number of look-ups; over the budget, a bkid outside the
// view is reported unknown without one.
func (r *Registry) ServiceOf(ctx context.Context, bkid string) (string, bool, error) {
	r.mu.Lock()
	svc, ok := r.owner[bkid]
	if ok {
		r.mu.Unlock()
		return svc, true, nil
	}
	if _, never := r.unknown.never[bkid]; never {
		r.mu.Unlock()
		r.m.BKIDLookups.WithLabelValues(metrics.LookupCached).Inc()
		return "", false, nil
	}
	allowed := r.takeLookupLocked(time.Now())
	r.mu.Unlock()
	if !allowed {
		r.m.BKIDLookups.WithLabelValues(metrics.LookupLimited).Inc()
		return "", false, nil
	}
	ch := r.cfg.Channels
	pipe := r.rdb.Pipeline()
	rec := pipe.HGet(ctx, ch.Key("backend", bkid), "service")
	counter := pipe.Get(ctx, ch.Key("bkid"))
	_, err := pipe.Exec(ctx)
	svc, recErr := rec.Result()
	switch {
	case errors.Is(recErr, redis.Nil):
		r.m.BKIDLookups.WithLabelValues(metrics.LookupUnknown).Inc()
		if issued(bkid, counter) {
			r.mu.Lock()
			r.rememberUnknownLocked(bkid)
			r.mu.Unlock()
		}
		return "", false, nil
	case recErr != nil:
		r.m.RedisErrors.WithLabelValues("lookup").Inc()
		return "", false, fmt.Errorf("look up bkid %s: %w", bkid, recErr)
	case err != nil && !errors.Is(err, redis.Nil):
		r.m.RedisErrors.WithLabelValues("lookup").Inc()
		return "", false, fmt.Errorf("look up bkid %s: %w", bkid, err)
	}
	r.m.BKIDLookups.WithLabelValues(metrics.LookupFound).Inc()
	r.mu.Lock()
	r.owner[bkid] = svc
	r.mu.Unlock()
	return svc, true, nil
}

// issued reports whether the bkid counter had passed bkid when it was read
// with the bkid's record: then a bkid without a record will never have one.
func issued(bkid string, counter *redis.StringCmd) bool {
	n, err := strconv.ParseUint(bkid, 10, 64)
	if err != nil {
		return false
	}
	c, err := counter.Uint64()
	return err == nil && n <= c
}
