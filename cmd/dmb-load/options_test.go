package main

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNonLoopbackAddressesAreRefused(t *testing.T) {
	for _, args := range [][]string{
		{"-dmb", "ws://10.0.0.1:8082"},
		{"-dmb", "ws://example.com:8082"},
		{"-dmb", "ws://0.0.0.0:8082"},
		{"-dmb", "ws://[::2]:8082"},
		{"-dmb", "ws://[fe80::1%25lo]:8082"},
		{"-metrics", "http://192.168.1.10:8082/metrics"},
		{"-metrics", "http://dmb.internal/metrics"},
		{"-redis", "10.1.2.3:6379"},
		{"-redis", "redis.example.com:6379"},
		{"-redis", "[2001:db8::1]:6379"},
		{"-transport", "tcp", "-tcp", "10.0.0.1:8084"},
		{"-transport", "tcp", "-tcp", "127.0.0.1:8084,dmb.example.com:8084"},
	} {
		_, err := parseOptions(args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "loopback") && !strings.Contains(err.Error(), "localhost") {
			t.Errorf("%v: err = %v, want a refusal of a non-loopback address", args, err)
		}
	}
}

func TestRunRefusesNonLoopbackAddressesBeforeConnecting(t *testing.T) {
	for _, mutate := range []func(*options){
		func(o *options) { o.DMB = "ws://192.0.2.1:8082" },
		func(o *options) { o.Metrics = "http://192.0.2.1:8082/metrics" },
		func(o *options) { o.Redis = "192.0.2.1:6379" },
	} {
		o := defaultOptions()
		mutate(&o)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		rep, err := run(ctx, o, nil)
		cancel()
		if err == nil || rep != nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%+v: run = %v, %v; want a refusal", o, rep, err)
		}
	}
}

func TestLoopbackAddressesAreAccepted(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-dmb", "ws://localhost:8082", "-redis", "localhost:6379"},
		{"-dmb", "ws://127.1.2.3:9000/", "-metrics", "http://127.0.0.1:9000/metrics", "-redis", "127.0.0.2:6380"},
		{"-dmb", "ws://[::1]:8082", "-redis", "[::1]:6379"},
		{"-transport", "tcp", "-tcp", "127.0.0.1:8084"},
		{"-transport", "tcp", "-tcp", "localhost:8084,127.0.0.2:9084"},
	} {
		if _, err := parseOptions(args, io.Discard); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
}

func TestDialsGoToLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:80": true, "127.9.9.9:80": true, "[::1]:80": true,
		"10.0.0.1:80": false, "[2001:db8::1]:80": false, "0.0.0.0:80": false,
	} {
		if err := loopbackOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("loopbackOnly(%s) = %v", addr, err)
		}
	}
}

func TestFlagsAreBounded(t *testing.T) {
	for _, args := range [][]string{
		{"-clients", "0"},
		{"-clients", "1000000"},
		{"-duration", "2h"},
		{"-duration", "1ms"},
		{"-rate", "-1"},
		{"-rate", "1e9"},
		{"-payload", "70000"},
		{"-inflight", "0"},
		{"-sources", "5000"},
		{"-backends", "0"},
		{"-backends", "65"},
		{"-scenario", "storm"},
		{"-service", "Bad Name"},
		{"-scenario", "broadcast", "-window", "5000"},
		{"-dmb", "http://127.0.0.1:8082"},
		{"-dmb", "ws://[::1]:8082", "-sources", "2"},
		{"-clients", "100000", "-sources", "1"},
		{"-flood", "-1"},
		{"-flood", "1001"},
		{"-flood-reconnect"},
		{"-flood", "1", "-sources", "1000"},
		{"-attack", "nope"},
		{"-attack", "slow,"},
		{"-attack", "slow", "-sources", "1000"},
		{"-attack", "all", "-scenario", "resume"},
		{"-attack", "slow", "-service", strings.Repeat("s", 50)},
		{"stray"},
	} {
		if _, err := parseOptions(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestAttackKindsAreReadInOrderOnceEach(t *testing.T) {
	for in, want := range map[string][]string{
		"":                   nil,
		"register,slow,slow": {attackSlow, attackRegister},
		" trickle , big":     {attackBig, attackTrickle},
		"all":                {attackSlow, attackBig, attackTrickle, attackUnknown, attackRefused, attackRegister},
		"unknown,all":        {attackSlow, attackBig, attackTrickle, attackUnknown, attackRefused, attackRegister},
		"bulk,all":           attackKinds,
	} {
		got, err := parseAttacks(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("parseAttacks(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestDefaultsFollowOtherFlags(t *testing.T) {
	o, err := parseOptions([]string{"-dmb", "ws://127.0.0.1:9999", "-clients", "60000", "-scenario", "direct"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Metrics != "http://127.0.0.1:9999/metrics" {
		t.Errorf("metrics = %q", o.Metrics)
	}
	if o.Sources < 2 || o.Sources*perSourceLimit() < 60000 {
		t.Errorf("sources = %d for 60000 clients at %d per address", o.Sources, perSourceLimit())
	}
	if o.Window != 4096 {
		t.Errorf("direct window = %d", o.Window)
	}
	if got := o.wsURL(); got != "ws://127.0.0.1:9999/ws/load" {
		t.Errorf("ws URL = %q", got)
	}
}

func TestSourceAddressesAreDistinctLoopbackHosts(t *testing.T) {
	seen := map[string]bool{}
	for _, a := range sourceAddrs(maxSources, false) {
		b := a.As4()
		if !a.IsLoopback() || b[3] == 0 || b[3] == 255 || seen[a.String()] {
			t.Fatalf("bad source address %v", a)
		}
		seen[a.String()] = true
	}
	if len(seen) != maxSources {
		t.Errorf("%d addresses", len(seen))
	}
}

func TestResumeOptions(t *testing.T) {
	o, err := parseOptions([]string{"-scenario", "resume", "-dmb", "ws://127.0.0.1:8082, ws://127.0.0.2:9082/", "-drain", "http://127.0.0.1:8083", "-duration", "4s"}, io.Discard)
	switch {
	case err != nil:
		t.Fatal(err)
	case !o.Recoverable || o.Rate != defaultResumeRate || o.DrainAfter != 2*time.Second || o.Window != 0:
		t.Errorf("resume defaults: recoverable %v, rate %v, drain after %v, window %d", o.Recoverable, o.Rate, o.DrainAfter, o.Window)
	case strings.Join(o.wsURLs(), " ") != "ws://127.0.0.1:8082/ws/load ws://127.0.0.2:9082/ws/load":
		t.Errorf("URLs %v", o.wsURLs())
	case o.Metrics != "http://127.0.0.1:8082/metrics":
		t.Errorf("metrics %s", o.Metrics)
	}
	if o, err := parseOptions([]string{"-scenario", "resume", "-recoverable=false"}, io.Discard); err != nil || o.Recoverable {
		t.Errorf("-recoverable=false: %v, recoverable %v", err, o.Recoverable)
	}
	for _, args := range [][]string{
		{"-scenario", "broadcast", "-drain", "http://127.0.0.1:8083"},
		{"-scenario", "resume", "-drain-after", "1s"},
		{"-scenario", "resume", "-drain", "http://10.0.0.1:8083"},
		{"-scenario", "resume", "-drain", "http://127.0.0.1:8083", "-drain-after", "10s", "-duration", "10s"},
		{"-scenario", "idle", "-recoverable"},
		{"-dmb", "ws://127.0.0.1:8082,ws://10.0.0.1:8082"},
		{"-dmb", "ws://127.0.0.1:8082,ws://[::1]:8082"},
	} {
		if _, err := parseOptions(args, io.Discard); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

func TestTransportFlagsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-transport", "quic"}, "want websocket, tcp or sse"},
		{[]string{"-transport", "sse", "-tcp", "127.0.0.1:8084"}, "-tcp is for -transport tcp"},
		{[]string{"-transport", "sse", "-flood", "2"}, "WebSocket only"},
		{[]string{"-transport", "tcp"}, "needs -tcp"},
		{[]string{"-tcp", "127.0.0.1:8084"}, "-tcp is for -transport tcp"},
		{[]string{"-transport", "tcp", "-tcp", "127.0.0.1"}, "missing port"},
		{[]string{"-transport", "tcp", "-tcp", "127.0.0.1:8084,[::1]:8084"}, "mixes IPv4 and IPv6"},
		{[]string{"-transport", "tcp", "-tcp", "127.0.0.1:8084", "-flood", "2"}, "WebSocket only"},
	} {
		_, err := parseOptions(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	o, err := parseOptions([]string{"-transport", "tcp", "-tcp", "[::1]:8084", "-clients", "10"}, io.Discard)
	switch {
	case err != nil:
		t.Fatal(err)
	case !o.clientIPv6() || o.Sources != 1:
		t.Errorf("an IPv6 TCP target: ipv6 %v, sources %d", o.clientIPv6(), o.Sources)
	case len(o.targets()) != 1 || o.targets()[0] != "[::1]:8084":
		t.Errorf("targets %v", o.targets())
	}
	o, err = parseOptions([]string{"-transport", "sse", "-dmb", "ws://127.0.0.1:8082/,ws://[::1]:9082", "-service", "chat"}, io.Discard)
	if err == nil {
		t.Errorf("SSE to IPv4 and IPv6 nodes: accepted")
	}
	o, err = parseOptions([]string{"-transport", "sse", "-dmb", "ws://127.0.0.1:8082/,ws://127.0.0.2:9082", "-service", "chat"}, io.Discard)
	switch {
	case err != nil:
		t.Fatal(err)
	case strings.Join(o.targets(), " ") != "http://127.0.0.1:8082/sse/chat http://127.0.0.2:9082/sse/chat":
		t.Errorf("SSE targets %v", o.targets())
	}
}
