package config

import (
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clearEnv unsets every setting for the test, so that defaults apply.
func clearEnv(t *testing.T) {
	for _, st := range Settings() {
		t.Setenv(st.Name, "x") // registers the restore
		os.Unsetenv(st.Name)
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

// Each refused setting is named, with its value and the form DMB accepts.
func TestInvalidSettingsAreRefusedAtStartByName(t *testing.T) {
	for _, tc := range []struct{ key, value, want string }{
		{"DMB_PORT", "70000", "a port number from 0 to 65535"},
		{"DMB_PORT", "eighty", "a whole number, such as 8082"},
		{"DMB_SEND_QUEUE", "0", "a whole number of at least 1, such as 1024"},
		{"DMB_SEND_QUEUE", "abc", "a whole number, such as 1024"},
		{"DMB_BACKEND_TIMEOUT", "1ms", "a duration of at least 100ms, such as 5s"},
		{"DMB_BACKEND_TIMEOUT", "5", "a duration: a number with a unit (ms, s, m, h), such as 5s"},
		{"DMB_BACKEND_RETENTION", "1s", "a duration of at least DMB_BACKEND_TIMEOUT (5s), such as 1h"},
		{"DMB_SHUTDOWN_TIMEOUT", "0s", "a positive duration, such as 10s"},
		{"DMB_WRITE_TIMEOUT", "-1s", "a positive duration, such as 10s"},
		{"DMB_MAX_MESSAGE_BYTES", "10", "a whole number of at least 128, such as 65536"},
		{"DMB_CLIENT_ERROR_LIMIT", "-1", "a whole number of 0 or more, such as 10"},
		{"DMB_TRUSTED_PROXIES", "not-a-cidr", "comma-separated CIDRs or addresses, such as 10.0.0.0/8,192.0.2.7"},
		{"DMB_ALLOWED_ORIGINS", "[", `comma-separated host patterns, such as app.example.com,*.example.com ("[": syntax error in pattern)`},
		{"DMB_ALLOWED_ORIGINS", "https://app.example.com", `("https://app.example.com" is a URL; write its host, as in app.example.com)`},
		{"DMB_ALLOWED_ORIGINS", "example.com/app", `("example.com/app" is not a host)`},
		{"DMB_PREFIX", "has space", "a non-empty word without spaces or braces, such as dmb"},
		{"DMB_PREFIX", "{dmb}", "a non-empty word without spaces or braces, such as dmb"},
		{"DMB_UPLINK_WORKERS", "0", "a whole number of at least 1, such as 4"},
		{"DMB_CLIENT_SEND_BUFFER", "100", "0 (the kernel's own) or bytes from 4096 to 1073741824, such as 1048576"},
		{"DMB_MAX_SERVICES", "0", "a whole number of at least 1, such as 10000"},
		{"DMB_ACCEPT_RATE", "-1", "connections a second, 0 for no pace"},
		{"DMB_BKID_LOOKUP_RATE", "-5", "a whole number of at least 1, such as 100"},
		{"DMB_LOG_LEVEL", "loud", "debug, info, warn or error"},
		{"DMB_LOG_FORMAT", "xml", "text or json"},
		{"DMB_ADMIN_ADDR", "8083", "host:port, such as 127.0.0.1:8083, or empty to turn the admin listener off"},
		{"DMB_TLS_CERT", "cert.pem", "a PEM file: DMB_TLS_CERT and DMB_TLS_KEY go together"},
		{"REDIS_TLS", "yes please", "true or false"},
		{"REDIS_PORT", "0", "a port number from 1 to 65535, such as 6379"},
		{"REDIS_SENTINEL_ADDRS", "127.0.0.1:26379", "the master name the Sentinels of REDIS_SENTINEL_ADDRS watch, such as mymaster"},
		{"REDIS_SENTINEL_MASTER", "mymaster", "comma-separated host:port of the Sentinels that watch REDIS_SENTINEL_MASTER"},
		{"REDIS_CLUSTER_ADDRS", "no-port", "comma-separated host:port, such as 10.0.0.1:7000,10.0.0.2:7000"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(tc.key, tc.value)
			_, err := Load()
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("Load() = %v, want one bad setting", err)
			}
			name := tc.key
			if tc.key == "DMB_TLS_CERT" {
				name = "DMB_TLS_KEY" // the one missing
			}
			if tc.key == "REDIS_SENTINEL_ADDRS" {
				name = "REDIS_SENTINEL_MASTER"
			}
			if tc.key == "REDIS_SENTINEL_MASTER" {
				name = "REDIS_SENTINEL_ADDRS"
			}
			if e := errs[0]; e.Name != name || !strings.Contains(e.Want, tc.want) {
				t.Fatalf("error %+v, want %s and %q", e, name, tc.want)
			}
		})
	}
}

// A user with several mistakes learns of all of them in one start.
func TestEveryBadSettingIsReportedAtOnce(t *testing.T) {
	clearEnv(t)
	t.Setenv("DMB_SEND_QUEUE", "abc")
	t.Setenv("DMB_PORT", "x")
	t.Setenv("DMB_BACKEND_TIMEOUT", "5")
	t.Setenv("DMB_ALLOWED_ORIGINS", "[")
	_, err := Load()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load() = %v, want Errors", err)
	}
	got := map[string]string{}
	for _, e := range errs {
		got[e.Name] = e.Value
	}
	want := map[string]string{"DMB_PORT": "x", "DMB_SEND_QUEUE": "abc", "DMB_BACKEND_TIMEOUT": "5", "DMB_ALLOWED_ORIGINS": "["}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("bad settings %v, want %v", got, want)
	}
	if msg := err.Error(); strings.Contains(msg, "envconfig") || strings.Contains(msg, "strconv") {
		t.Fatalf("error shows the parser's internals: %s", msg)
	}
}

func TestSecretsAreNotEchoedInErrors(t *testing.T) {
	clearEnv(t)
	t.Setenv("DMB_JWT_SECRET", "short-secret")
	_, err := Load()
	if err == nil || strings.Contains(err.Error(), "short-secret") || !strings.Contains(err.Error(), "DMB_JWT_SECRET") {
		t.Fatalf("Load() = %v, want DMB_JWT_SECRET named and its value hidden", err)
	}
}

func TestGoodOriginPatternsAreAccepted(t *testing.T) {
	clearEnv(t)
	t.Setenv("DMB_ALLOWED_ORIGINS", "app.example.com, *.example.org,localhost:3000")
	if _, err := Load(); err != nil {
		t.Fatal(err)
	}
}

func TestUsageListsEverySettingWithItsDefault(t *testing.T) {
	var b strings.Builder
	if err := WriteUsage(&b); err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeOf(Config{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		def := f.Tag.Get("default")
		if def == "" {
			def = "(empty)"
		}
		if line := "  " + f.Tag.Get("envconfig") + "  default " + def + "\n"; !strings.Contains(b.String(), line) {
			t.Errorf("usage lacks %q", line)
		}
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
