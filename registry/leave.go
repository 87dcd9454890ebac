package registry

import (
	"context"
	"time"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
	"github.com/dmb-broker/dmb/pubsub"
)

// disconnect handles bk_disconnect. Every node receives it and takes the
// bkid out of its live view at once, so that clients move away without
// waiting for the liveness check.
//
// Anyone who can publish on the register channel can send a leave, for any
// bkid, so a leave does not take the bkid out of Redis and does not last:
// DMB tells the bkid's uplink {"type":"bk_disconnected"} (one node does,
// whatever the number of nodes), and a bkid whose uplink is still
// subscribed at the next liveness check is live again (see heal). A
// backend that really leaves unsubscribes and stays dead, and its bkid is
// dropped after DMB_BACKEND_RETENTION like a crashed one.
func (r *Registry) disconnect(ctx context.Context, bkid string) {
	svc, ok, err := r.ServiceOf(ctx, bkid)
	if err != nil || !ok {
		r.log.Debug("bk_disconnect for unknown bkid dropped", "bkid", bkid, "err", err)
		r.m.Drops.WithLabelValues(metrics.DropUnknownBKID).Inc()
		return
	}
	r.mu.Lock()
	r.left[bkid] = time.Now()
	s := r.serviceLocked(svc)
	changed := removeLive(s, bkid)
	r.mu.Unlock()
	r.m.Leaves.WithLabelValues("left").Inc()
	r.log.Info("backend left", "service", svc, "bkid", bkid)
	if changed {
		r.changed(svc)
	}
	r.tellLeft(ctx, svc, bkid)
}

// leftClaim is how long the claim of a leave's notice lasts: longer than
// the nodes take to handle one leave, so that one of them tells the
// backend, and short, so that the next leave is told too. A flood of
// leaves is told at most once per leftClaim.
const leftClaim = time.Second

// tellLeft publishes bk_disconnected on the bkid's uplink; the node that
// claims the leave does.
func (r *Registry) tellLeft(ctx context.Context, svc, bkid string) {
	won, err := r.rdb.SetNX(ctx, r.cfg.Channels.Key("left", bkid), r.cfg.NodeID, min(leftClaim, r.cfg.BackendTimeout/2)).Result()
	if err != nil {
		r.m.RedisErrors.WithLabelValues("register").Inc()
		return
	}
	if !won {
		return
	}
	if err := pubsub.Publish(ctx, r.rdb, r.sharded, r.cfg.Channels.Uplink(bkid), protocol.AppendDisconnected(nil, bkid)).Err(); err != nil {
		r.m.RedisErrors.WithLabelValues("publish").Inc()
		r.log.Warn("bk_disconnected not sent", "service", svc, "bkid", bkid, "err", err)
	}
}

// leftLocked reports whether bkid left and must stay out of the live view:
// always when before is zero (a look-up on demand), else when it left at or
// after before, the start of a liveness check. A bkid that left earlier is
// forgotten: the check decides whether it is live. r.mu is held.
func (r *Registry) leftLocked(bkid string, before time.Time) (stays, forgotten bool) {
	at, ok := r.left[bkid]
	if !ok {
		return false, false
	}
	if before.IsZero() || !at.Before(before) {
		return true, false
	}
	delete(r.left, bkid)
	return false, true
}

// forgetLeavesLocked drops the leaves older than a liveness check that
// began at start, of bkids the check did not see; r.mu is held.
func (r *Registry) forgetLeavesLocked(start time.Time) {
	for b, at := range r.left {
		if at.Before(start) {
			delete(r.left, b)
		}
	}
}

// registeredAgainLocked forgets a leave of bkid, which registered again:
// the backend says it is back (it may not have sent the leave). r.mu is
// held.
func (r *Registry) registeredAgainLocked(bkid string) {
	if _, ok := r.left[bkid]; ok {
		delete(r.left, bkid)
		r.m.Leaves.WithLabelValues("back").Inc()
	}
}

// backAfterLeave logs and counts the bkids found live again by a liveness
// check after a leave.
func (r *Registry) backAfterLeave(back map[string]string) {
	for bkid, svc := range back {
		r.m.Leaves.WithLabelValues("back").Inc()
		r.log.Info("backend live again after a leave: still subscribed", "service", svc, "bkid", bkid)
	}
}
