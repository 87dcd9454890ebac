package main

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

// uplinkEvent is an uplink message event as DMB publishes it for a frame
// of the generator's.
func uplinkEvent(cid string, id, t int64, payload int) string {
	pad := make([]byte, payload)
	for i := range pad {
		pad[i] = 'x'
	}
	frame := uplinkFrame(nil, id, t, payload, pad)
	f, err := protocol.DecodeClientFrame(frame)
	if err != nil {
		panic(err)
	}
	return string(protocol.AppendMessage(nil, cid, "", f.Data, f.ID))
}

func TestUplinkMessagesAreReadWithoutJSONAsWithIt(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload string
		cid     string
		id, t   int64
		hasT    bool
	}{
		{"ours", uplinkEvent("c7Qx", 42, 987654321, 100), "c7Qx", 42, 987654321, true},
		{"small payload", uplinkEvent("c1", 1, 5, 0), "c1", 1, 5, true},
		{"large payload", uplinkEvent("c2", 99999999, 1<<40, 60000), "c2", 99999999, 1 << 40, true},
		{"foreign data", `{"type":"message","cid":"c3","data":{"text":"hi ,\"id\":1"},"id":7}`, "c3", 7, 0, false},
		{"data with an id inside", `{"type":"message","cid":"c4","data":{"t":9,"p":",\"id\":3"},"id":8}`, "c4", 8, 9, true},
	} {
		cid, id, tt, hasT, ok := readUplinkMessage(tc.payload)
		if !ok || cid != tc.cid || id != tc.id || tt != tc.t || hasT != tc.hasT {
			t.Errorf("%s: readUplinkMessage = %q %d %d %v %v, want %q %d %d %v", tc.name, cid, id, tt, hasT, ok, tc.cid, tc.id, tc.t, tc.hasT)
		}
		var ev struct {
			CID string          `json:"cid"`
			ID  json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal([]byte(tc.payload), &ev); err != nil || ev.CID != cid || string(ev.ID) != itoa(id) {
			t.Errorf("%s: JSON reads %q %s (%v), the fast path %q %d", tc.name, ev.CID, ev.ID, err, cid, id)
		}
	}
	// Other shapes are left to JSON.
	for _, p := range []string{
		`{"type":"client_connected","cid":"c1","service":"load","remote":"127.0.0.1"}`,
		`{"type":"message","cid":"c1","user":"alice","data":1,"id":2}`,
		`{"type":"message","cid":"c1","data":1}`,
		`{"type":"message","cid":"c1","data":1,"id":"m-1"}`,
		`{"type":"message","cid":"","data":1,"id":2}`,
		`{"type":"message","cid":"c1","data":1,"id":2} `,
	} {
		if _, _, _, _, ok := readUplinkMessage(p); ok {
			t.Errorf("%s read by the fast path", p)
		}
	}
}

func TestLoadBackendCountsEveryEventAndEachClientsOrder(t *testing.T) {
	lb := &loadBackend{run: &runClock{}, lat: &histogram{}, lastID: map[string]*int64{}}
	ctx := context.Background()
	for _, p := range []string{
		`{"type":"client_connected","cid":"a","service":"load","remote":"127.0.0.1"}`,
		uplinkEvent("a", 1, 0, 100),
		uplinkEvent("b", 1, 0, 100),
		uplinkEvent("a", 2, 0, 100),
		`{"type":"message","cid":"a","user":"u","data":{"t":0},"id":3}`, // through JSON
		uplinkEvent("a", 3, 0, 100),                                     // repeated
		uplinkEvent("b", 2, 0, 100),
		`{"type":"client_disconnected","cid":"a","code":1000,"reason":""}`,
		`not json`,
	} {
		lb.handle(ctx, p)
	}
	if n, c, d, r, u := lb.messages.Load(), lb.connected.Load(), lb.disconnected.Load(), lb.reordered.Load(), lb.undecoded.Load(); n != 6 || c != 1 || d != 1 || r != 1 || u != 1 {
		t.Errorf("messages %d, connected %d, disconnected %d, reordered %d, undecoded %d; want 6 1 1 1 1", n, c, d, r, u)
	}
	if s := lb.lat.summary(); s.Count != 6 {
		t.Errorf("latency recorded %d times, want 6", s.Count)
	}
}

// BenchmarkLoadBackendMessage is the backend's work per uplink message; at
// 100k/s it shares two cores with DMB and Redis.
func BenchmarkLoadBackendMessage(b *testing.B) {
	lb := &loadBackend{run: &runClock{}, lat: &histogram{}, lastID: map[string]*int64{}}
	events := make([]string, 1000)
	for i := range events {
		events[i] = uplinkEvent("cid-"+itoa(int64(i)), int64(i+1), 5, 100)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		lb.handle(ctx, events[i%len(events)])
	}
}

// BenchmarkLoadBackendMessageJSON is the same work with encoding/json, as
// package backend's Run decodes each event.
func BenchmarkLoadBackendMessageJSON(b *testing.B) {
	p := uplinkEvent("cid-1", 1, 5, 100)
	b.ReportAllocs()
	for b.Loop() {
		var ev struct {
			Type string          `json:"type"`
			CID  string          `json:"cid"`
			Data json.RawMessage `json:"data"`
			ID   json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal([]byte(p), &ev); err != nil {
			b.Fatal(err)
		}
	}
}

func TestFloodMessagesAreToldApart(t *testing.T) {
	f, err := protocol.DecodeClientFrame([]byte(floodFrame))
	if err != nil {
		t.Fatal(err)
	}
	flood := string(protocol.AppendMessage(nil, "c9", "", f.Data, f.ID))
	if !isFloodMessage(flood) {
		t.Errorf("%s: not told apart as a flood message", flood)
	}
	for _, p := range []string{
		uplinkEvent("c7Qx", 42, 987654321, 100),
		`{"type":"message","cid":"c1","data":"flooded","id":1}`,
		`{"type":"message","cid":"c1","user":"u","data":"flood","id":1}`,
		`{"type":"client_connected","cid":"c1","service":"load","remote":"127.0.0.1"}`,
	} {
		if isFloodMessage(p) {
			t.Errorf("%s: taken for a flood message", p)
		}
	}
	lb := &loadBackend{lastID: map[string]*int64{}, run: &runClock{}, lat: &histogram{}}
	for _, p := range []string{flood, `{"type":"message","cid":"c1","user":"u","data":"flood","id":1}`} {
		lb.handle(context.Background(), p)
	}
	if lb.flood.Load() != 2 || lb.messages.Load() != 0 || lb.undecoded.Load() != 0 {
		t.Errorf("flood %d, messages %d, undecoded %d; want 2, 0, 0", lb.flood.Load(), lb.messages.Load(), lb.undecoded.Load())
	}
}
