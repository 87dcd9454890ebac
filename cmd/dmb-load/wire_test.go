package main

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/dmb-broker/dmb/protocol"
)

func TestFramesAreReadWithoutJSONAsWithIt(t *testing.T) {
	pad := make([]byte, 1000)
	for i := range pad {
		pad[i] = 'x'
	}
	data := appendData(nil, 12345, 987654321, 100, pad)
	for _, tc := range []struct {
		name  string
		frame []byte
		want  frameInfo
	}{
		{"broadcast", protocol.AppendBroadcast(nil, data), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true}},
		{"direct", protocol.AppendDirect(nil, data, nil, false), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true}},
		{"direct reply", protocol.AppendDirect(nil, data, json.RawMessage(`7`), false), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true}},
		{"room", protocol.AppendRoom(nil, "room-7", data), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true}},
		{"joined", protocol.AppendMembership(nil, true, "room-7"), frameInfo{kind: frameJoined, id: -1, ok: true}},
		{"ack", protocol.AppendAck(nil, json.RawMessage(`42`)), frameInfo{kind: frameAck, id: 42, ok: true}},
		{"error", protocol.AppendError(nil, json.RawMessage(`43`), "backend unavailable"), frameInfo{kind: frameError, id: 43, ok: true}},
		{"connected", protocol.AppendConnected(nil, protocol.Connected{CID: "abc", Service: "load"}), frameInfo{kind: frameConnected, id: -1, cid: "abc", ok: true}},
		{"connected with a session", protocol.AppendConnected(nil, protocol.Connected{CID: "abc", Service: "load", Session: "tok.en", Resumed: true}), frameInfo{kind: frameConnected, id: -1, cid: "abc", ok: true}},
		{"session", protocol.AppendSession(nil, "ey-J_a.b"), frameInfo{kind: frameSession, id: -1, session: []byte("ey-J_a.b"), ok: true}},
		{"recoverable broadcast", protocol.WithOffset(protocol.AppendBroadcast(nil, data), "42", "1733380000000-7"), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true, offset: []byte("42:1733380000000-7")}},
		{"recoverable direct", protocol.WithOffset(protocol.AppendDirect(nil, data, nil, false), "42", "1-0"), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true, offset: []byte("42:1-0")}},
		{"recoverable room", protocol.WithOffset(protocol.AppendRoom(nil, "room-7", data), "9", "5-3"), frameInfo{kind: frameData, seq: 12345, t: 987654321, ok: true, offset: []byte("9:5-3")}},
	} {
		if got := readFrame(tc.frame); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: readFrame = %+v, want %+v", tc.name, got, tc.want)
		}
		slow := readFrameJSON(tc.frame)
		if slow.kind != tc.want.kind || slow.seq != tc.want.seq || slow.t != tc.want.t || slow.ok != tc.want.ok || slow.cid != tc.want.cid ||
			!bytes.Equal(slow.offset, tc.want.offset) || !bytes.Equal(slow.session, tc.want.session) ||
			tc.want.kind != frameData && slow.id != tc.want.id {
			t.Errorf("%s: readFrameJSON = %+v, want %+v", tc.name, slow, tc.want)
		}
	}
	// Data that is not ours, or reformatted, still reads.
	if f := readFrame([]byte(`{"event":"dmb:broadcast","data":{"t":5, "s":4}}`)); f.kind != frameData || f.seq != 4 || f.t != 5 || !f.ok {
		t.Errorf("reformatted data: %+v", f)
	}
	if f := readFrame([]byte(`{"event":"dmb:broadcast","data":"hello"}`)); f.kind != frameData || f.ok {
		t.Errorf("foreign data: %+v", f)
	}
}

func TestConnectedTellsTheSessionAndWhetherItResumed(t *testing.T) {
	for _, want := range []protocol.Connected{
		{CID: "c1", Service: "load"},
		{CID: "c2", Service: "load", Session: "a.b-c_d"},
		{CID: "c3", Service: "load", Session: "a.b", Resumed: true},
		{CID: "c4", Service: "load", Session: "a.b", Resumed: true, Recovered: true},
	} {
		var c client
		c.readSession(protocol.AppendConnected(nil, want))
		if c.session != want.Session || c.resumed != want.Resumed || c.recovered != want.Recovered {
			t.Errorf("%+v: read session %q, resumed %v, recovered %v", want, c.session, c.resumed, c.recovered)
		}
	}
}

func TestResumeStateCountsEachSequenceOnceAndKeepsTheLastOffsets(t *testing.T) {
	c := &client{lat: &histogram{}, run: &runClock{start: time.Now()}}
	s := &resumeState{}
	c.rs = s
	for _, seq := range []int64{1, 2, 3, 3, 70, 64, 2, 130} {
		s.data(c, frameInfo{kind: frameData, seq: seq, ok: true, offset: []byte("7:" + strconv.FormatInt(seq, 10) + "-0")}, 0)
	}
	s.data(c, frameInfo{kind: frameData, seq: 5, ok: true, offset: []byte("8:1-0")}, 0)
	if got := c.received.Load(); got != 7 {
		t.Errorf("received %d, want 7", got)
	}
	if c.duplicates != 2 || c.reordered != 2 {
		t.Errorf("duplicates %d, reordered %d; want 2 and 2", c.duplicates, c.reordered)
	}
	for sent, want := range map[int64]int64{0: 0, 3: 0, 5: 1, 63: 59, 64: 59, 70: 64, 130: 123, 200: 193} {
		if got := s.missing(sent); got != want {
			t.Errorf("missing(%d) = %d, want %d", sent, got, want)
		}
	}
	if q := s.query("tok"); q != "offset=7%3A130-0%2C8%3A1-0&resume=tok" {
		t.Errorf("query = %s", q)
	}
}

func TestMessagesHaveThePayloadSize(t *testing.T) {
	pad := make([]byte, maxPayload)
	for i := range pad {
		pad[i] = 'x'
	}
	for _, payload := range []int{0, 10, 40, 100, 1000, maxPayload} {
		for _, seq := range []int64{1, 99999999} {
			d := appendData(nil, seq, int64(time.Hour), payload, pad)
			if payload >= 60 && len(d) != payload {
				t.Errorf("data for payload %d is %d bytes", payload, len(d))
			}
			var v struct{ S, T int64 }
			if err := json.Unmarshal(d, &v); err != nil || v.S != seq || v.T != int64(time.Hour) {
				t.Errorf("data %s: %v %+v", d, err, v)
			}
			var cmd struct {
				Type string
				CID  string
				Data json.RawMessage
			}
			if err := json.Unmarshal(appendDirect(nil, "cid1", seq, 5, payload, pad), &cmd); err != nil || cmd.Type != "direct" || cmd.CID != "cid1" {
				t.Errorf("direct command: %v %+v", err, cmd)
			}
			if err := json.Unmarshal(appendBroadcast(nil, seq, 5, payload, pad), &cmd); err != nil || cmd.Type != "broadcast" {
				t.Errorf("broadcast command: %v %+v", err, cmd)
			}
			up := uplinkFrame(nil, seq, 5, payload, pad)
			f, err := protocol.DecodeClientFrame(up)
			if err != nil || string(f.ID) != json.Number(itoa(seq)).String() {
				t.Errorf("uplink frame %s: %v", up, err)
			}
			if payload >= 60 && len(f.Data) != payload {
				t.Errorf("uplink data for payload %d is %d bytes", payload, len(f.Data))
			}
			if tt, ok := uplinkSendTime(f.Data); !ok || tt != 5 {
				t.Errorf("uplink send time of %s = %d %v", f.Data, tt, ok)
			}
		}
	}
}

func itoa(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestHistogramQuantilesAreWithinItsResolution(t *testing.T) {
	h := &histogram{}
	const n = 100000
	vals := make([]time.Duration, n)
	for i := range vals {
		// log-uniform from 1 µs to 1 s
		vals[i] = time.Duration(1e3 * pow10(rand.Float64()*6))
		h.record(i, vals[i])
	}
	sortDurations(vals)
	s := h.summary()
	if s.Count != n {
		t.Fatalf("count %d", s.Count)
	}
	for _, q := range []struct {
		got float64
		p   float64
	}{{s.P50, 0.50}, {s.P90, 0.90}, {s.P99, 0.99}, {s.P999, 0.999}} {
		want := float64(vals[int(q.p*n)-1]) / 1e3
		if rel := (q.got - want) / want; rel > 0.02 || rel < -0.02 {
			t.Errorf("p%g = %v µs, want %v µs (off by %.1f%%)", q.p*100, q.got, want, rel*100)
		}
	}
	if s.Max != us(uint64(vals[n-1])) {
		t.Errorf("max = %v, want %v", s.Max, us(uint64(vals[n-1])))
	}
}

func TestHistogramBucketsCoverEveryValueInOrder(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 1<<40 - 1, 1 << 40, 1 << 62} {
		b := bucketOf(v)
		if b < prev || b >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d after %d", v, b, prev)
		}
		prev = b
		if low, width := bucketRange(b); v < histMaxValue && (v < low || v >= low+width) {
			t.Errorf("%d in bucket %d = [%d, %d)", v, b, low, low+width)
		}
	}
	for b := 1; b < histBuckets; b++ {
		low, _ := bucketRange(b)
		plow, pwidth := bucketRange(b - 1)
		if plow+pwidth != low {
			t.Fatalf("bucket %d starts at %d, bucket %d ends at %d", b, low, b-1, plow+pwidth)
		}
	}
}

func pow10(x float64) float64 { return math.Pow(10, x) }

func sortDurations(v []time.Duration) { slices.Sort(v) }

// FuzzReadFrame checks that no frame from DMB makes the tool's reader
// panic or read a negative number, and that a frame the fast path reads
// as DMB writes it (its fields in DMB's order, no key twice) reads the
// same through encoding/json.
func FuzzReadFrame(f *testing.F) {
	data := appendData(nil, 12345, 987654321, 20, []byte("xxxxxxxxxxxxxxxxxxxx"))
	f.Add(protocol.AppendBroadcast(nil, data))
	f.Add(protocol.AppendDirect(nil, data, json.RawMessage(`7`), false))
	f.Add(protocol.AppendRoom(nil, "room-7", data))
	f.Add(protocol.AppendAck(nil, json.RawMessage(`42`)))
	f.Add(protocol.AppendError(nil, json.RawMessage(`43`), "backend unavailable"))
	f.Add(protocol.AppendConnected(nil, protocol.Connected{CID: "abc", Service: "load"}))
	f.Add([]byte(`{"event":"dmb:ack","id":999999999999999999999}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := readFrame(b)
		if got.seq < 0 || got.t < 0 || got.id < -1 {
			t.Fatalf("%q: %+v", b, got)
		}
		if !got.ok || !json.Valid(b) || bytes.Count(b, []byte(`"s":`)) > 1 || bytes.Count(b, []byte(`"t":`)) > 1 ||
			bytes.Count(b, []byte(`"id":`)) > 1 || bytes.Count(b, []byte(`"event":`)) > 1 || bytes.Count(b, []byte(`"data":`)) > 1 {
			return
		}
		slow := readFrameJSON(b)
		if slow.kind != got.kind || got.kind == frameData && (slow.seq != got.seq || slow.t != got.t) || got.kind == frameAck && slow.id != got.id {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, got, slow)
		}
	})
}
