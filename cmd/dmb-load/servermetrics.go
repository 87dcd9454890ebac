package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// serverSample is what the generator reads of DMB's /metrics at one moment:
// the process figures the Prometheus Go and process collectors export, and
// a few dmb_ series to cross-check the generator's own counts.
type serverSample struct {
	At          time.Time
	RSS         float64 // process_resident_memory_bytes
	CPU         float64 // process_cpu_seconds_total
	HeapInuse   float64 // go_memstats_heap_inuse_bytes
	Goroutines  float64 // go_goroutines
	Connections float64 // sum of dmb_connections
	Deliveries  float64 // dmb_deliveries_total
	Drops       map[string]float64
	Disconnects map[string]float64
}

// scrape reads DMB's /metrics.
func scrape(ctx context.Context, hc *http.Client, url string) (serverSample, error) {
	s := serverSample{At: time.Now(), Drops: map[string]float64{}, Disconnects: map[string]float64{}}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return s, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return s, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("get %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	seen := false
	for sc.Scan() {
		name, labels, value, ok := parseSample(sc.Text())
		if !ok {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			s.RSS, seen = value, true
		case "process_cpu_seconds_total":
			s.CPU = value
		case "go_memstats_heap_inuse_bytes":
			s.HeapInuse = value
		case "go_goroutines":
			s.Goroutines = value
		case "dmb_connections":
			s.Connections += value
		case "dmb_deliveries_total":
			s.Deliveries += value
		case "dmb_drops_total":
			s.Drops[labelValue(labels, "reason")] += value
		case "dmb_disconnects_total":
			s.Disconnects[labelValue(labels, "code")] += value
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("read %s: %w", url, err)
	}
	if !seen {
		return s, fmt.Errorf("%s has no process_resident_memory_bytes", url)
	}
	return s, nil
}

// parseSample splits one line of the Prometheus text format; comments and
// malformed lines are not ok.
func parseSample(line string) (name, labels string, value float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	rest := line
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", "", 0, false
		}
		name, labels, rest = line[:i], line[i+1:j], line[j+1:]
	} else {
		i := strings.IndexByte(line, ' ')
		if i < 0 {
			return "", "", 0, false
		}
		name, rest = line[:i], line[i:]
	}
	f := strings.Fields(rest) // value, then an optional timestamp
	if len(f) == 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", "", 0, false
	}
	return name, labels, v, true
}

// labelValue returns one label's value from `a="x",b="y"`; DMB's label
// values need no escaping.
func labelValue(labels, key string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// deltas returns after - before for every key that changed.
func deltas(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
