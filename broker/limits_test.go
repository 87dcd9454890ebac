package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmb-broker/dmb/metrics"
	"github.com/dmb-broker/dmb/protocol"
)

func TestConnectionLimitsRefuseWithTryAgainLater(t *testing.T) {
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	for _, tc := range []struct {
		name    string
		cfg     Config
		refused int // the first client refused, counting from 0; -1: none
		reason  string
	}{
		{"clients per node", Config{MaxClients: 2}, 2, "node full"},
		{"clients per address", Config{MaxClientsPerAddr: 2}, 2, "too many connections from this address"},
		{"handshakes per address", Config{HandshakeRate: 0.001}, 1, "too many connections from this address"}, // a burst of 1
		{"a trusted proxy's own address", Config{MaxClientsPerAddr: 2, HandshakeRate: 0.001, TrustedProxies: loopback}, -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cfg := tc.cfg
			cfg.SendQueue, cfg.MaxMessageBytes, cfg.ClientErrorLimit, cfg.WriteTimeout = 64, 65536, 10, 10*time.Second
			cfg.Logger, cfg.Metrics = slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(prometheus.NewRegistry())
			brk := runBroker(t, New(liveRegistry{}, nullUplink{}, cfg))
			srv, addr := serveBroker(t, brk)
			t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
			for i := range 4 {
				c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/chat", nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.CloseNow() })
				_, data, err := c.Read(ctx)
				switch {
				case tc.refused >= 0 && i >= tc.refused:
					var ce websocket.CloseError
					if !errors.As(err, &ce) || ce.Code != protocol.CloseTryAgainLater || ce.Reason != tc.reason {
						t.Fatalf("client %d: read %s, %v; want close 1013 %q", i, data, err, tc.reason)
					}
				case err != nil:
					t.Fatalf("client %d refused: %v", i, err)
				}
			}
		})
	}
}

func TestAClientThatLeftFreesItsPlaceUnderTheAddressLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	brk := runBroker(t, New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) {
		c.SendQueue = 64
		c.MaxClientsPerAddr = 1
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	for i := range 3 {
		c := dialWelcomed(t, "ws://"+addr+"/ws/chat")
		_ = c.Close(websocket.StatusNormalClosure, "")
		waitFor(t, ctx, func() bool { return brk.Clients() == 0 })
		if n := len(brk.addrCounts()); n != 0 {
			t.Fatalf("round %d: %d addresses still counted with no client", i, n)
		}
	}
}

func (b *Broker) addrCounts() map[string]int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return maps.Clone(b.byAddr)
}

func TestAnIPv6ClientCountsByItsSlash64(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	brk := runBroker(t, New(liveRegistry{}, nullUplink{}, testConfig(func(c *Config) {
		c.MaxClientsPerAddr = 1
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})))
	srv, addr := serveBroker(t, brk)
	t.Cleanup(func() { _ = srv.Close(); _ = brk.Shutdown(context.Background()) })
	for _, tc := range []struct {
		from    string
		refused bool
	}{
		{"2001:db8:0:7::1", false},
		{"2001:db8:0:7:ffff::2", true}, // the same /64
		{"2001:db8:0:8::1", false},
		{"192.0.2.1", false},
		{"192.0.2.2", false}, // IPv4 counts by the address
	} {
		c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/chat", &websocket.DialOptions{
			HTTPHeader: map[string][]string{"X-Forwarded-For": {tc.from}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		_, data, err := c.Read(ctx)
		var ce websocket.CloseError
		if refused := errors.As(err, &ce) && ce.Code == protocol.CloseTryAgainLater; refused != tc.refused {
			t.Fatalf("a client from %s: read %s, %v; refused %v, want %v", tc.from, data, err, refused, tc.refused)
		}
	}
}
