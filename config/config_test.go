package config

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clearEnv unsets every setting for the test, so that defaults apply.
func clearEnv(t *testing.T) {
	for _, k := range []string{"DMB_PORT", "DMB_BIND", "REDIS_HOST", "REDIS_PORT", "REDIS_USERNAME", "REDIS_PASSWORD",
		"REDIS_DB", "REDIS_TLS", "REDIS_POOL_SIZE", "DMB_PREFIX", "DMB_NODE_ID", "DMB_BACKEND_TIMEOUT",
		"DMB_SHUTDOWN_TIMEOUT", "DMB_WRITE_TIMEOUT", "DMB_SEND_QUEUE", "DMB_MAX_MESSAGE_BYTES",
		"DMB_CLIENT_ERROR_LIMIT", "DMB_ALLOWED_ORIGINS", "DMB_TRUSTED_PROXIES", "DMB_UPLINK_WORKERS",
		"DMB_LOG_LEVEL", "DMB_LOG_FORMAT"} {
		t.Setenv(k, "x") // registers the restore
		os.Unsetenv(k)
	}
}

func TestDefaultsMatchTheOriginalDMBAndAreSafe(t *testing.T) {
	clearEnv(t)
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 8082 || c.RedisHost != "localhost" || c.RedisPort != 6379 || c.Prefix != "dmb" {
		t.Fatalf("defaults = %+v", c)
	}
	if c.BackendTimeout != 5*time.Second || c.MaxMessageBytes != 65536 || c.SendQueue != 1024 || c.ClientErrorLimit != 10 {
		t.Fatalf("defaults = %+v", c)
	}
	if len(c.AllowedOrigins) != 0 {
		t.Fatalf("origins allowed by default: %v", c.AllowedOrigins)
	}
	p, err := c.TrustedPrefixes()
	if err != nil || len(p) != 2 || !p[0].Contains(netip.MustParseAddr("127.0.0.1")) || !p[1].Contains(netip.IPv6Loopback()) {
		t.Fatalf("trusted proxies = %v %v, want loopback only", p, err)
	}
	if c.NodeID == "" || !strings.HasSuffix(c.NodeID, ":8082") {
		t.Fatalf("node id %q, want hostname:port", c.NodeID)
	}
	if o := c.RedisOptions(); o.Addr != "localhost:6379" || o.TLSConfig != nil {
		t.Fatalf("redis options %+v", o)
	}
}

func TestSettingsComeFromTheEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("DMB_PORT", "9000")
	t.Setenv("REDIS_HOST", "redis.internal")
	t.Setenv("REDIS_PORT", "6380")
	t.Setenv("REDIS_TLS", "true")
	t.Setenv("REDIS_PASSWORD", "s3cret")
	t.Setenv("DMB_ALLOWED_ORIGINS", "app.example.com,*.example.org")
	t.Setenv("DMB_TRUSTED_PROXIES", "10.0.0.0/8,192.0.2.7")
	t.Setenv("DMB_BACKEND_TIMEOUT", "2s")
	t.Setenv("DMB_NODE_ID", "dmb-a1")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 9000 || c.Addr() != ":9000" || c.NodeID != "dmb-a1" || c.BackendTimeout != 2*time.Second {
		t.Fatalf("config = %+v", c)
	}
	if len(c.AllowedOrigins) != 2 || c.AllowedOrigins[1] != "*.example.org" {
		t.Fatalf("origins = %v", c.AllowedOrigins)
	}
	p, _ := c.TrustedPrefixes()
	if len(p) != 2 || p[1] != netip.MustParsePrefix("192.0.2.7/32") {
		t.Fatalf("trusted = %v", p)
	}
	o := c.RedisOptions()
	if o.Addr != "redis.internal:6380" || o.Password != "s3cret" || o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.internal" {
		t.Fatalf("redis options %+v", o)
	}
}

func TestInvalidSettingsAreRefusedAtStart(t *testing.T) {
	for _, tc := range []struct{ key, value string }{
		{"DMB_PORT", "70000"},
		{"DMB_PORT", "eighty"},
		{"DMB_SEND_QUEUE", "0"},
		{"DMB_BACKEND_TIMEOUT", "1ms"},
		{"DMB_MAX_MESSAGE_BYTES", "10"},
		{"DMB_TRUSTED_PROXIES", "not-a-cidr"},
		{"DMB_PREFIX", "has space"},
		{"DMB_PREFIX", "{dmb}"},
		{"DMB_UPLINK_WORKERS", "0"},
		{"REDIS_SENTINEL_ADDRS", "127.0.0.1:26379"}, // without REDIS_SENTINEL_MASTER
		{"REDIS_SENTINEL_MASTER", "mymaster"},       // without REDIS_SENTINEL_ADDRS
		{"REDIS_CLUSTER_ADDRS", "no-port"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(tc.key, tc.value)
			if _, err := Load(); err == nil {
				t.Fatalf("%s=%s accepted", tc.key, tc.value)
			}
		})
	}
}

func TestRedisModesFollowTheSettings(t *testing.T) {
	clearEnv(t)
	c, err := Load()
	if err != nil || c.RedisMode() != RedisSingle {
		t.Fatalf("default mode %q (%v), want single", c.RedisMode(), err)
	}
	if _, ok := c.RedisClient().(*redis.Client); !ok {
		t.Fatalf("single mode client is %T", c.RedisClient())
	}

	t.Setenv("REDIS_CLUSTER_ADDRS", "10.0.0.1:7000, 10.0.0.2:7000")
	if c, err = Load(); err != nil || c.RedisMode() != RedisCluster {
		t.Fatalf("mode %q (%v), want cluster", c.RedisMode(), err)
	}
	cc, ok := c.RedisClient().(*redis.ClusterClient)
	if !ok {
		t.Fatalf("cluster mode client is %T", c.RedisClient())
	}
	if got := cc.Options().Addrs; len(got) != 2 || got[1] != "10.0.0.2:7000" {
		t.Fatalf("cluster addrs %q", got)
	}
	t.Setenv("REDIS_DB", "2")
	if _, err := Load(); err == nil {
		t.Fatal("REDIS_DB 2 accepted with a cluster")
	}
	t.Setenv("REDIS_DB", "0")
	t.Setenv("REDIS_SENTINEL_ADDRS", "10.0.0.3:26379")
	t.Setenv("REDIS_SENTINEL_MASTER", "mymaster")
	if _, err := Load(); err == nil {
		t.Fatal("cluster and sentinel accepted together")
	}

	t.Setenv("REDIS_CLUSTER_ADDRS", "")
	if c, err = Load(); err != nil || c.RedisMode() != RedisSentinel {
		t.Fatalf("mode %q (%v), want sentinel", c.RedisMode(), err)
	}
	if _, ok := c.RedisClient().(*redis.Client); !ok {
		t.Fatalf("sentinel mode client is %T", c.RedisClient())
	}
}
