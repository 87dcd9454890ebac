package main

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The resume scenario (docs/protocol.md, section 11): the backend
// broadcasts recoverable messages at -rate while the clients, spread over
// the nodes of -dmb, read them; -drain makes one node leave halfway. A
// client whose connection ends takes its session up again on the next node
// of the list that answers, with its token and the last offset of each
// stream, as the browser client does, and the report says what each client
// lost, got twice or out of order, and how the resumes went.

// resumer is the resume scenario's side shared by the clients.
type resumer struct {
	ctx       context.Context // ended when the generator closes the clients
	endpoints []*endpoint     // -dmb's nodes, in order
	readLimit int
	lat       histogram // from a connection's end to dmb:connected on the next

	drops       atomic.Int64 // connections DMB (or the network) ended
	resumed     atomic.Int64 // reconnects that took the session up ("resumed":true)
	unrecovered atomic.Int64 // ... with "recovered":false
	fresh       atomic.Int64 // reconnects that got a new session ("resumed":false)
	cidChanged  atomic.Int64 // resumes under another cid: never, by the protocol
	failed      atomic.Int64 // clients that could not connect again before the end

	mu    sync.Mutex
	codes map[string]int // close codes of the drops
}

func newResumer(ctx context.Context, endpoints []*endpoint, readLimit int) *resumer {
	return &resumer{ctx: ctx, endpoints: endpoints, readLimit: readLimit, codes: map[string]int{}}
}

// resumeState is one client's side of the resume scenario; the reader's.
type resumeState struct {
	r       *resumer
	dialer  *net.Dialer
	ep      int            // the endpoint it is connected to
	seen    []uint64       // the sequence numbers received, a bit each
	offsets []streamOffset // the last offset of each stream
	drops   int            // its connections that ended
	resumes int            // ... and were taken up again with the session
}

type streamOffset struct {
	stream string // the text before the first ':'
	offset []byte
}

// maxStreams is the most offsets a resume sends (docs/protocol.md).
const maxStreams = 32

// maxResumeSeq bounds the sequence numbers a client keeps a bit for.
const maxResumeSeq = 1 << 24

// data counts one data frame: once per sequence number, the others as
// duplicates; a number below one received before is reordered.
func (s *resumeState) data(c *client, f frameInfo, now int64) {
	if f.offset != nil {
		s.setOffset(f.offset)
	}
	if f.seq <= 0 || f.seq >= maxResumeSeq {
		c.undecoded++
		return
	}
	w, b := int(f.seq>>6), uint(f.seq&63)
	for len(s.seen) <= w {
		s.seen = append(s.seen, 0)
	}
	if s.seen[w]&(1<<b) != 0 {
		c.duplicates++
		return
	}
	s.seen[w] |= 1 << b
	if f.seq < c.lastSeq {
		c.reordered++
	} else {
		c.lastSeq = f.seq
	}
	c.received.Add(1)
	c.lat.record(c.idx, time.Duration(now-f.t))
}

// missing counts the sequence numbers 1 to sent never received.
func (s *resumeState) missing(sent int64) int64 {
	var have int64
	for w, word := range s.seen {
		lo := int64(w) << 6
		if lo > sent {
			break
		}
		if hi := lo + 63; hi > sent { // keep the bits up to sent
			word &= 1<<uint(sent-lo+1) - 1
		}
		if w == 0 {
			word &^= 1 // there is no message 0
		}
		have += int64(bits.OnesCount64(word))
	}
	return sent - have
}

// setOffset keeps o as the last offset of its stream.
func (s *resumeState) setOffset(o []byte) {
	stream, _, _ := bytes.Cut(o, []byte{':'})
	for i := range s.offsets {
		if s.offsets[i].stream == string(stream) {
			s.offsets[i].offset = append(s.offsets[i].offset[:0], o...)
			return
		}
	}
	if len(s.offsets) < maxStreams {
		s.offsets = append(s.offsets, streamOffset{stream: string(stream), offset: bytes.Clone(o)})
	}
}

// query is the query of a resume: resume=<token>&offset=<o1>,<o2>...
func (s *resumeState) query(token string) string {
	q := url.Values{"resume": {token}}
	if len(s.offsets) > 0 {
		parts := make([]string, len(s.offsets))
		for i, o := range s.offsets {
			parts[i] = string(o.offset)
		}
		q.Set("offset", strings.Join(parts, ","))
	}
	return q.Encode()
}

// resumable tells whether the browser client resumes after a connection
// ended with code: a node that left (1001), a dropped connection (1006), a
// slow consumer (4008).
func resumable(code int) bool { return code == 1001 || code == 1006 || code == 4008 }

// resume connects c again after its connection ended, with its session
// token and offsets, to the next node of the list that answers (the same
// one when there is one), trying the list again after a pause that doubles
// up to a second, until the generator closes the clients. It tells whether
// c has a connection again.
func (s *resumeState) resume(c *client) bool {
	r := s.r
	dropped := time.Now()
	code := c.endCode()
	r.drops.Add(1)
	r.mu.Lock()
	addFailure(r.codes, strconv.Itoa(code))
	r.mu.Unlock()
	s.drops++
	if !resumable(code) || c.session == "" {
		r.failed.Add(1)
		return false
	}
	pause := 10 * time.Millisecond
	for r.ctx.Err() == nil && !c.closing.Load() {
		for k := 1; k <= len(r.endpoints); k++ {
			i := (s.ep + k) % len(r.endpoints)
			e, err := r.endpoints[i].withQuery(s.query(c.session))
			if err != nil {
				break
			}
			n, err := dialClient(r.ctx, s.dialer, e, r.readLimit)
			if err != nil {
				continue
			}
			c.mu.Lock()
			if c.closing.Load() { // the run is over: close waits for the reader
				c.mu.Unlock()
				_ = n.conn.Close()
				return false
			}
			c.conn, c.in = n.conn, n.in
			c.mu.Unlock()
			s.ep = i
			r.lat.record(c.idx, time.Since(dropped))
			if n.resumed {
				r.resumed.Add(1)
				s.resumes++
				if !n.recovered {
					r.unrecovered.Add(1)
				}
				if n.cid != c.cid {
					r.cidChanged.Add(1)
				}
			} else {
				r.fresh.Add(1)
				s.offsets = s.offsets[:0]
			}
			c.cid, c.session, c.resumed, c.recovered = n.cid, n.session, n.resumed, n.recovered
			return true
		}
		sleepCtx(r.ctx, pause)
		pause = min(2*pause, time.Second)
	}
	r.failed.Add(1)
	return false
}

// resumeResult is the resume scenario's own part of the report.
type resumeResult struct {
	Nodes             []string       `json:"nodes"`
	ClientsPerNode    []int          `json:"clients_per_node"` // where the clients first connected
	ExpectedPerClient int64          `json:"expected_per_client"`
	ClientsLosing     int            `json:"clients_losing"` // clients that missed a message
	Drain             *drainResult   `json:"drain,omitempty"`
	Drops             int64          `json:"drops"` // connections DMB ended
	DropCodes         map[string]int `json:"drop_codes"`
	ClientsDropped    int            `json:"clients_dropped"`
	ClientsResumed    int            `json:"clients_resumed"` // dropped, and every drop resumed
	Resumes           int64          `json:"resumes"`
	Unrecovered       int64          `json:"resumes_unrecovered"` // resumed, "recovered":false
	FreshSessions     int64          `json:"fresh_sessions"`      // reconnected as a new session
	CIDChanged        int64          `json:"resumes_with_another_cid"`
	Failed            int64          `json:"reconnects_failed"`
	ResumeLatency     latencySummary `json:"resume_latency_us"` // connection end to dmb:connected
}

// drainResult is what -drain did.
type drainResult struct {
	URL       string  `json:"url"`
	AtSeconds float64 `json:"at_seconds"` // after the start of sending
	Status    int     `json:"status"`
	Error     string  `json:"error,omitempty"`
}

// postDrain asks the node's admin listener to drain: it closes every
// client with 1001 and stops.
func postDrain(ctx context.Context, hc *http.Client, adminURL string) (int, error) {
	u := strings.TrimSuffix(adminURL, "/")
	if !strings.HasSuffix(u, "/drain") {
		u += "/drain"
	}
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader("{}"))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("POST %s: %s", u, resp.Status)
	}
	return resp.StatusCode, nil
}
