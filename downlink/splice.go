package downlink

import (
	"context"
	"slices"
	"sync/atomic"
	"time"

	"github.com/dmb-broker/dmb/history"
)

// A resumed session is spliced into the stream of messages on the
// downlink's worker, between two messages (Splice): the resume has read
// the histories, and checks against Last that nothing recoverable came
// since, so that every message is either in what it read or handed out
// after the session joined. A message it read may still be queued here,
// live: Skip keeps it from the session.

// skip keeps the messages of one backend up to upTo from cid.
type skip struct {
	cid   string
	upTo  history.ID
	until time.Time // when it goes, if no newer message came
}

// skipFor bounds how long a skip waits for a newer message of its
// backend: the live copies of what a resume read are queued behind it
// by moments.
const skipFor = time.Minute

// Splice runs fn on the worker, between two messages, and returns when it
// ran, or when ctx ends first: fn then never runs.
func (d *Downlink) Splice(ctx context.Context, fn func(v View)) error {
	var state atomic.Int32 // 0 waiting, 1 ran, 2 abandoned
	done := make(chan struct{})
	task := func() {
		if state.CompareAndSwap(0, 1) {
			fn(View{d})
		}
		close(done)
	}
	select {
	case d.tasks <- task:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		if state.Load() == 1 {
			return nil
		}
		return ctx.Err()
	case <-ctx.Done():
		if state.CompareAndSwap(0, 2) {
			return ctx.Err()
		}
		<-done // it is running: wait for it
		return nil
	}
}

// View is the worker's state that a splice reads and writes.
type View struct{ d *Downlink }

// Last is the position of the last recoverable message of bkid handed
// out.
func (v View) Last(bkid string) (history.ID, bool) {
	id, ok := v.d.last[bkid]
	return id, ok
}

// Skip keeps the messages of bkid up to upTo from cid.
func (v View) Skip(bkid, cid string, upTo history.ID) {
	now := time.Now()
	for b, list := range v.d.skips { // drop those that waited long enough
		list = dropSkips(list, func(s skip) bool { return now.After(s.until) })
		if len(list) == 0 {
			delete(v.d.skips, b)
		} else {
			v.d.skips[b] = list
		}
	}
	v.d.skips[bkid] = append(v.d.skips[bkid], skip{cid: cid, upTo: upTo, until: now.Add(skipFor)})
}

// Since returns the recoverable messages of bkid handed out after after,
// from the recent ones the downlink keeps; false when it no longer holds
// them all.
func (v View) Since(bkid string, after history.ID) ([]history.Entry, bool) {
	r := v.d.recent[bkid]
	if r == nil || len(r.entries) == 0 || after.Less(r.entries[0].ID) {
		return nil, false
	}
	i, _ := slices.BinarySearchFunc(r.entries, after, func(e history.Entry, id history.ID) int {
		switch {
		case e.ID.Less(id):
			return -1
		case id.Less(e.ID):
			return 1
		}
		return 0
	})
	for i < len(r.entries) && !after.Less(r.entries[i].ID) {
		i++
	}
	return slices.Clone(r.entries[i:]), true
}

// recent holds the last recoverable messages of one backend handed out,
// so that a resume that read the history a moment ago gets what was
// handed out since without reading it again.
type recent struct {
	entries []history.Entry
	bytes   int
}

// How many of a backend's recent messages are kept, and how many bytes.
const (
	recentCount = 512
	recentBytes = 256 << 10
)

// handedOut records that the message of bkid at pos, payload, is being
// handed out, and returns the cids that had it from history.
func (d *Downlink) handedOut(bkid string, pos history.ID, payload []byte) []string {
	d.last[bkid] = pos
	r := d.recent[bkid]
	if r == nil {
		r = &recent{}
		d.recent[bkid] = r
	}
	r.entries = append(r.entries, history.Entry{ID: pos, Payload: payload})
	r.bytes += len(payload)
	drop := 0
	for len(r.entries)-drop > recentCount || r.bytes > recentBytes && drop < len(r.entries)-1 {
		r.bytes -= len(r.entries[drop].Payload)
		drop++
	}
	if drop > 0 {
		r.entries = append(r.entries[:0], r.entries[drop:]...)
		clear(r.entries[len(r.entries):cap(r.entries)])
	}
	list := d.skips[bkid]
	if len(list) == 0 {
		return nil
	}
	var cids []string
	for _, s := range list {
		if !s.upTo.Less(pos) {
			cids = append(cids, s.cid)
		}
	}
	// Positions only grow: a skip up to pos or before has done its work.
	if list = dropSkips(list, func(s skip) bool { return !pos.Less(s.upTo) }); len(list) == 0 {
		delete(d.skips, bkid)
	} else {
		d.skips[bkid] = list
	}
	return cids
}

func dropSkips(list []skip, drop func(skip) bool) []skip {
	out := list[:0]
	for _, s := range list {
		if !drop(s) {
			out = append(out, s)
		}
	}
	clear(list[len(out):])
	return out
}
