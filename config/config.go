// Package config reads a DMB node's settings from the environment with
// envconfig, applies the defaults and validates them once at start, and
// reports every bad setting at once, by name, with the form it accepts.
// docs/configuration.md lists every setting with its default, and `dmb -h`
// prints them; a test keeps the doc in step.
package config

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config is every setting of a node.
type Config struct {
	Port int    `envconfig:"DMB_PORT" default:"8082" desc:"HTTP and WebSocket port"`
	Bind string `envconfig:"DMB_BIND" default:"" desc:"address to listen on; empty means every interface"`
	// TCPPort is the port of TCP clients, one JSON frame per line
	// (docs/protocol.md, section 12), on DMB_BIND too; 0 is off.
	TCPPort int `envconfig:"DMB_TCP_PORT" default:"0" desc:"port of TCP clients, one JSON frame per line (with TLS when DMB_TLS_CERT is set); 0 turns it off"`

	TLSCert    string `envconfig:"DMB_TLS_CERT" default:"" desc:"PEM certificate (chain) file; with DMB_TLS_KEY, DMB serves HTTPS and wss:// itself"`
	TLSKey     string `envconfig:"DMB_TLS_KEY" default:"" desc:"PEM private key file for DMB_TLS_CERT"`
	AdminAddr  string `envconfig:"DMB_ADMIN_ADDR" default:"127.0.0.1:8083" desc:"admin listener (stats, log level, disconnect, drain, pprof); empty turns it off"`
	JWTSecret  string `envconfig:"DMB_JWT_SECRET" default:"" desc:"when set (32 bytes or more), clients must present ?token=<HS256 JWT signed with it>"`
	AdminToken string `envconfig:"DMB_ADMIN_TOKEN" default:"" desc:"when set, the admin listener requires Authorization: Bearer <token>, and serves pprof"`

	AdminHosts []string `envconfig:"DMB_ADMIN_HOSTS" default:"" desc:"comma-separated host names the admin listener answers to besides loopback names and its own address"`

	RedisHost     string `envconfig:"REDIS_HOST" default:"localhost" desc:"Redis host"`
	RedisPort     int    `envconfig:"REDIS_PORT" default:"6379" desc:"Redis port"`
	RedisUsername string `envconfig:"REDIS_USERNAME" default:"" desc:"Redis ACL user name"`
	RedisPassword string `envconfig:"REDIS_PASSWORD" default:"" desc:"Redis password"`
	RedisDB       int    `envconfig:"REDIS_DB" default:"0" desc:"Redis database number"`
	RedisTLS      bool   `envconfig:"REDIS_TLS" default:"false" desc:"connect to Redis over TLS"`
	RedisTLSCA    string `envconfig:"REDIS_TLS_CA" default:"" desc:"PEM file of the CAs that sign Redis's certificate; empty means the system's"`
	RedisPoolSize int    `envconfig:"REDIS_POOL_SIZE" default:"0" desc:"Redis connections per node for commands; 0 means 10 per CPU"`

	RedisClusterAddrs     []string `envconfig:"REDIS_CLUSTER_ADDRS" default:"" desc:"comma-separated host:port of Redis Cluster nodes (some suffice); DMB then uses sharded pub/sub"`
	RedisSentinelAddrs    []string `envconfig:"REDIS_SENTINEL_ADDRS" default:"" desc:"comma-separated host:port of Redis Sentinels; DMB then follows the master they name"`
	RedisSentinelMaster   string   `envconfig:"REDIS_SENTINEL_MASTER" default:"" desc:"the master name the Sentinels watch"`
	RedisSentinelPassword string   `envconfig:"REDIS_SENTINEL_PASSWORD" default:"" desc:"password of the Sentinels themselves, when they require one"`

	Prefix           string        `envconfig:"DMB_PREFIX" default:"dmb" desc:"prefix of every Redis channel and key"`
	NodeID           string        `envconfig:"DMB_NODE_ID" default:"" desc:"node name in bk_message_ack; empty means hostname:port"`
	BackendTimeout   time.Duration `envconfig:"DMB_BACKEND_TIMEOUT" default:"5s" desc:"a crashed backend is noticed within this time"`
	BackendRetention time.Duration `envconfig:"DMB_BACKEND_RETENTION" default:"1h" desc:"a backend not live for this long is dropped from its service, and a service without a live backend for this long is forgotten (4004); a backend can come back with its bkid for as long again"`
	ShutdownTimeout  time.Duration `envconfig:"DMB_SHUTDOWN_TIMEOUT" default:"10s" desc:"graceful shutdown must finish within this time"`
	WriteTimeout     time.Duration `envconfig:"DMB_WRITE_TIMEOUT" default:"10s" desc:"a write to a client that takes longer drops the connection"`
	SendQueue        int           `envconfig:"DMB_SEND_QUEUE" default:"1024" desc:"frames queued per client before it is closed as a slow consumer (4008)"`
	MaxMessageBytes  int64         `envconfig:"DMB_MAX_MESSAGE_BYTES" default:"65536" desc:"largest client frame; larger closes with 1009"`
	ClientErrorLimit int           `envconfig:"DMB_CLIENT_ERROR_LIMIT" default:"10" desc:"bad frames a client may send in a minute before it is closed with 1008"`
	AllowedOrigins   []string      `envconfig:"DMB_ALLOWED_ORIGINS" default:"" desc:"comma-separated origin host patterns allowed besides the same host, e.g. app.example.com,*.example.com"`
	TrustedProxies   []string      `envconfig:"DMB_TRUSTED_PROXIES" default:"127.0.0.0/8,::1/128" desc:"comma-separated CIDRs whose X-Forwarded-For / X-Real-IP are believed"`
	UplinkWorkers    int           `envconfig:"DMB_UPLINK_WORKERS" default:"4" desc:"uplink publishers; each pipelines the frames of its share of clients"`

	SendQueueBytes   int           `envconfig:"DMB_SEND_QUEUE_BYTES" default:"4194304" desc:"bytes queued per client before it is closed as a slow consumer (4008)"`
	ClientSendBuffer int           `envconfig:"DMB_CLIENT_SEND_BUFFER" default:"1048576" desc:"kernel send buffer of each client connection in bytes (Linux doubles it): what a client that does not read holds in the kernel; 0 leaves it to the kernel (4 MB each on Linux)"`
	QueueBudget      int64         `envconfig:"DMB_QUEUE_BUDGET" default:"1073741824" desc:"bytes all client queues of the node may hold together (a frame shared by many clients counts once); past it, a client holding more than its share is closed as a slow consumer (4008)"`
	ClientRate       float64       `envconfig:"DMB_CLIENT_RATE" default:"100" desc:"frames a second a client may send on average; faster ones are answered rate limited, and 1008 when it goes on; 0 turns the limit off"`
	ClientBurst      int           `envconfig:"DMB_CLIENT_BURST" default:"200" desc:"frames a client may send at once above DMB_CLIENT_RATE; a tenth of it in a connection's first second, the rest of that second read at the rate"`
	HandshakeTimeout time.Duration `envconfig:"DMB_HANDSHAKE_TIMEOUT" default:"10s" desc:"time a connection has to send its request headers (the WebSocket upgrade)"`
	FrameTimeout     time.Duration `envconfig:"DMB_FRAME_TIMEOUT" default:"10s" desc:"time a client has to finish a frame it started; longer drops the connection"`
	IdleTimeout      time.Duration `envconfig:"DMB_HTTP_IDLE_TIMEOUT" default:"60s" desc:"a keep-alive HTTP connection idle this long is closed (WebSocket connections are not HTTP-idle)"`
	MaxHeaderBytes   int           `envconfig:"DMB_MAX_HEADER_BYTES" default:"16384" desc:"largest request line and headers; larger is answered 431"`
	MaxClients       int           `envconfig:"DMB_MAX_CLIENTS" default:"0" desc:"clients per node; more are closed with 1013; 0 means the open-file limit less what Redis and the listeners need"`
	MaxClientsPerIP  int           `envconfig:"DMB_MAX_CLIENTS_PER_ADDR" default:"0" desc:"clients per client address (after DMB_TRUSTED_PROXIES); more are closed with 1013; 0 turns the limit off"`
	MaxClientRooms   int           `envconfig:"DMB_MAX_CLIENT_ROOMS" default:"100" desc:"rooms one client may be in; a join past it is refused: an error to the backend, or dmb:error \"too many rooms\" to the client"`
	HandshakeRate    float64       `envconfig:"DMB_HANDSHAKE_RATE" default:"0" desc:"WebSocket handshakes a second per client address; more are closed with 1013; 0 turns the limit off"`
	AcceptRate       float64       `envconfig:"DMB_ACCEPT_RATE" default:"0" desc:"new connections a second the node takes from its client listeners, all addresses together, in bursts of a hundredth of a second's worth (at least one); the others wait for their turn unread, none is refused; 0 turns the pace off"`
	BackendRate      float64       `envconfig:"DMB_BACKEND_RATE" default:"20000" desc:"client messages a second a node publishes to one backend; more are answered backend busy, so that Redis never cuts a backend's subscription for reading too slowly; 0 turns the bound off"`
	DownlinkBuffer   int           `envconfig:"DMB_DOWNLINK_BUFFER" default:"67108864" desc:"bytes of backend messages that may wait for the fan-out; Redis's readers never wait, and what does not fit is dropped and counted"`
	MaxBackendBytes  int           `envconfig:"DMB_MAX_BACKEND_BYTES" default:"1048576" desc:"largest payload a backend may publish on its downlink; larger is dropped and reported to the backend"`
	RefusalLogEvery  time.Duration `envconfig:"DMB_REFUSAL_LOG_INTERVAL" default:"10s" desc:"refused connections are logged one line at most per reason and interval, with their count"`

	SessionSecret string        `envconfig:"DMB_SESSION_SECRET" default:"" desc:"signs session tokens (32 bytes or more); empty means a secret the first node makes and keeps in Redis, shared by every node"`
	ResumeWindow  time.Duration `envconfig:"DMB_RESUME_WINDOW" default:"2m" desc:"a client that lost its connection may resume its session for this long; 0 turns resuming off"`
	HistorySize   int           `envconfig:"DMB_HISTORY_SIZE" default:"10000" desc:"recoverable messages kept per backend"`
	HistoryTTL    time.Duration `envconfig:"DMB_HISTORY_TTL" default:"2m" desc:"how long a recoverable message is kept at most; keep it at least DMB_RESUME_WINDOW"`

	MaxServices    int `envconfig:"DMB_MAX_SERVICES" default:"10000" desc:"services the registry holds at most; a bk_connect of one more new service is nacked (too many services)"`
	BKIDLookupRate int `envconfig:"DMB_BKID_LOOKUP_RATE" default:"100" desc:"Redis look-ups per second, per node, of bkids the node does not know; more are dropped as unknown"`

	LogLevel  string `envconfig:"DMB_LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat string `envconfig:"DMB_LOG_FORMAT" default:"text" desc:"text or json"`
}

// Load reads the environment and validates the result. Its error is Errors,
// every bad setting at once, by variable name, with the form it accepts.
func Load() (Config, error) {
	var c Config
	errs := readEnv(&c)
	var invalid Errors
	if errors.As(c.Validate(), &invalid) {
		unread := map[string]bool{}
		for _, e := range errs {
			unread[e.Name] = true
		}
		for _, e := range invalid {
			// A value that could not be read was left at zero: saying it
			// is out of range too would only add noise.
			if !unread[e.Name] {
				errs = append(errs, e)
			}
		}
	}
	if len(errs) > 0 {
		return Config{}, errs
	}
	return c, nil
}

// Validate checks the settings and fills the derived ones. Its error is
// Errors.
func (c *Config) Validate() error {
	var errs Errors
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, bad("DMB_PORT", c.Port, "a port number from 0 to 65535"))
	}
	if c.TCPPort < 0 || c.TCPPort > 65535 {
		errs = append(errs, bad("DMB_TCP_PORT", c.TCPPort, "a port number from 1 to 65535, or 0 to turn TCP clients off"))
	}
	if c.AdminAddr != "" {
		if _, _, err := net.SplitHostPort(c.AdminAddr); err != nil {
			errs = append(errs, bad("DMB_ADMIN_ADDR", c.AdminAddr, "host:port, such as 127.0.0.1:8083, or empty to turn the admin listener off"))
		}
	}
	if c.Prefix == "" || strings.ContainsAny(c.Prefix, " \t\r\n{}") {
		errs = append(errs, bad("DMB_PREFIX", c.Prefix, "a non-empty word without spaces or braces, such as dmb"))
	}
	if c.BackendTimeout < 100*time.Millisecond {
		errs = append(errs, bad("DMB_BACKEND_TIMEOUT", c.BackendTimeout, "a duration of at least 100ms, such as 5s"))
	}
	if c.BackendRetention < c.BackendTimeout {
		errs = append(errs, bad("DMB_BACKEND_RETENTION", c.BackendRetention, "a duration of at least DMB_BACKEND_TIMEOUT (%s), such as 1h", c.BackendTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, bad("DMB_SHUTDOWN_TIMEOUT", c.ShutdownTimeout, "a positive duration, such as 10s"))
	}
	if c.WriteTimeout <= 0 {
		errs = append(errs, bad("DMB_WRITE_TIMEOUT", c.WriteTimeout, "a positive duration, such as 10s"))
	}
	if c.SendQueue < 1 {
		errs = append(errs, bad("DMB_SEND_QUEUE", c.SendQueue, "a whole number of at least 1, such as 1024"))
	}
	if c.MaxMessageBytes < 128 {
		errs = append(errs, bad("DMB_MAX_MESSAGE_BYTES", c.MaxMessageBytes, "a whole number of at least 128, such as 65536"))
	}
	if c.ClientErrorLimit < 0 {
		errs = append(errs, bad("DMB_CLIENT_ERROR_LIMIT", c.ClientErrorLimit, "a whole number of 0 or more, such as 10"))
	}
	if _, err := levelOf(c.LogLevel); err != nil {
		errs = append(errs, bad("DMB_LOG_LEVEL", c.LogLevel, "debug, info, warn or error"))
	}
	if !validFormat(c.LogFormat) {
		errs = append(errs, bad("DMB_LOG_FORMAT", c.LogFormat, "text or json"))
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < 32 {
		errs = append(errs, bad("DMB_JWT_SECRET", c.JWTSecret, "at least 32 bytes, or empty for no auth"))
	}
	if c.SessionSecret != "" && len(c.SessionSecret) < 32 {
		errs = append(errs, bad("DMB_SESSION_SECRET", c.SessionSecret, "at least 32 bytes, or empty for one kept in Redis"))
	}
	if c.ResumeWindow < 0 {
		errs = append(errs, bad("DMB_RESUME_WINDOW", c.ResumeWindow, "a duration of 0 or more, such as 2m"))
	}
	if c.HistorySize < 1 {
		errs = append(errs, bad("DMB_HISTORY_SIZE", c.HistorySize, "a whole number of at least 1, such as 10000"))
	}
	if c.HistoryTTL < time.Second {
		errs = append(errs, bad("DMB_HISTORY_TTL", c.HistoryTTL, "a duration of at least 1s, such as 2m"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		name, value := "DMB_TLS_KEY", c.TLSKey
		if c.TLSCert == "" {
			name, value = "DMB_TLS_CERT", c.TLSCert
		}
		errs = append(errs, bad(name, value, "a PEM file: DMB_TLS_CERT and DMB_TLS_KEY go together"))
	}
	errs = append(errs, c.validateRedis()...)
	errs = append(errs, c.validateLimits()...)
	if c.MaxServices < 1 {
		errs = append(errs, bad("DMB_MAX_SERVICES", c.MaxServices, "a whole number of at least 1, such as 10000"))
	}
	if c.BKIDLookupRate < 1 {
		errs = append(errs, bad("DMB_BKID_LOOKUP_RATE", c.BKIDLookupRate, "a whole number of at least 1, such as 100"))
	}
	if c.UplinkWorkers < 1 {
		errs = append(errs, bad("DMB_UPLINK_WORKERS", c.UplinkWorkers, "a whole number of at least 1, such as 4"))
	}
	if _, err := c.TrustedPrefixes(); err != nil {
		errs = append(errs, bad("DMB_TRUSTED_PROXIES", c.TrustedProxies, "comma-separated CIDRs or addresses, such as 10.0.0.0/8,192.0.2.7"))
	}
	for _, p := range c.AllowedOrigins {
		if err := checkOriginPattern(strings.TrimSpace(p)); err != nil {
			errs = append(errs, bad("DMB_ALLOWED_ORIGINS", c.AllowedOrigins, "comma-separated host patterns, such as app.example.com,*.example.com (%v)", err))
			break
		}
	}
	if c.NodeID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "dmb"
		}
		c.NodeID = net.JoinHostPort(host, strconv.Itoa(c.Port))
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// checkOriginPattern reports what is wrong with one pattern of
// DMB_ALLOWED_ORIGINS: the origin check compares hosts, with path.Match.
func checkOriginPattern(p string) error {
	if strings.Contains(p, "://") {
		return fmt.Errorf("%q is a URL; write its host, as in %s", p, p[strings.Index(p, "://")+3:])
	}
	if strings.ContainsAny(p, "/ ") {
		return fmt.Errorf("%q is not a host", p)
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("%q: %w", p, err)
	}
	return nil
}

// TrustedPrefixes parses DMB_TRUSTED_PROXIES. A bare address is a /32 or
// /128.
func (c *Config) TrustedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.TrustedProxies {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("DMB_TRUSTED_PROXIES: %q is neither a CIDR nor an address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Addr is the address the HTTP server listens on.
func (c *Config) Addr() string { return net.JoinHostPort(c.Bind, strconv.Itoa(c.Port)) }

// TCPAddr is the address TCP clients connect to, "" when they are off.
func (c *Config) TCPAddr() string {
	if c.TCPPort == 0 {
		return ""
	}
	return net.JoinHostPort(c.Bind, strconv.Itoa(c.TCPPort))
}

// RedisMode is how DMB reaches Redis.
type RedisMode string

// The Redis modes.
const (
	RedisSingle   RedisMode = "single"   // one server: REDIS_HOST, REDIS_PORT
	RedisSentinel RedisMode = "sentinel" // the master that Sentinels name
	RedisCluster  RedisMode = "cluster"  // a Redis Cluster, sharded pub/sub
)

// RedisTarget names the Redis the settings point at, for logs: host:port,
// or the Sentinels and their master, or the cluster nodes.
func (c *Config) RedisTarget() string {
	switch c.RedisMode() {
	case RedisCluster:
		return "cluster " + strings.Join(trimAll(c.RedisClusterAddrs), ",")
	case RedisSentinel:
		return "master " + c.RedisSentinelMaster + " of sentinels " + strings.Join(trimAll(c.RedisSentinelAddrs), ",")
	}
	return net.JoinHostPort(c.RedisHost, strconv.Itoa(c.RedisPort))
}

// RedisMode returns the mode the settings select.
func (c *Config) RedisMode() RedisMode {
	switch {
	case len(c.RedisClusterAddrs) > 0:
		return RedisCluster
	case len(c.RedisSentinelAddrs) > 0:
		return RedisSentinel
	}
	return RedisSingle
}

func (c *Config) validateRedis() Errors {
	var errs Errors
	if _, err := c.redisRootCAs(); err != nil {
		errs = append(errs, bad("REDIS_TLS_CA", c.RedisTLSCA, "a readable PEM file of CA certificates (%v)", err))
	}
	if len(c.RedisClusterAddrs) > 0 && len(c.RedisSentinelAddrs) > 0 {
		errs = append(errs, bad("REDIS_SENTINEL_ADDRS", c.RedisSentinelAddrs, "empty when REDIS_CLUSTER_ADDRS is set: a cluster has no Sentinels"))
	}
	if len(c.RedisSentinelAddrs) > 0 && c.RedisSentinelMaster == "" {
		errs = append(errs, bad("REDIS_SENTINEL_MASTER", c.RedisSentinelMaster, "the master name the Sentinels of REDIS_SENTINEL_ADDRS watch, such as mymaster"))
	}
	if len(c.RedisSentinelAddrs) == 0 && c.RedisSentinelMaster != "" {
		errs = append(errs, bad("REDIS_SENTINEL_ADDRS", c.RedisSentinelAddrs, "comma-separated host:port of the Sentinels that watch REDIS_SENTINEL_MASTER"))
	}
	if len(c.RedisClusterAddrs) > 0 && c.RedisDB != 0 {
		errs = append(errs, bad("REDIS_DB", c.RedisDB, "0 with REDIS_CLUSTER_ADDRS: a cluster has one database"))
	}
	if c.RedisPort < 1 || c.RedisPort > 65535 {
		errs = append(errs, bad("REDIS_PORT", c.RedisPort, "a port number from 1 to 65535, such as 6379"))
	}
	for name, list := range map[string][]string{"REDIS_CLUSTER_ADDRS": c.RedisClusterAddrs, "REDIS_SENTINEL_ADDRS": c.RedisSentinelAddrs} {
		for _, a := range list {
			if _, _, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil {
				errs = append(errs, bad(name, list, "comma-separated host:port, such as 10.0.0.1:7000,10.0.0.2:7000"))
				break
			}
		}
	}
	return errs
}

// RedisClient returns a go-redis client for the configured mode: a
// *redis.Client for one server or behind Sentinel, a *redis.ClusterClient
// for a cluster.
func (c *Config) RedisClient() redis.UniversalClient {
	o := c.RedisOptions()
	if c.RedisTLS && c.RedisMode() != RedisSingle {
		// Each cluster node or master is verified under its own host name.
		o.TLSConfig = nil
		roots, _ := c.redisRootCAs() // checked by Validate
		o.Dialer = tlsDialer(o.DialTimeout, roots)
	}
	switch c.RedisMode() {
	case RedisCluster:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:    trimAll(c.RedisClusterAddrs),
			Username: o.Username, Password: o.Password, PoolSize: o.PoolSize,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			MaxRetries: o.MaxRetries, Dialer: o.Dialer,
			// MOVED and ASK are still followed (the command did not run);
			// they are how a cluster says a slot moved to a new master.
			MaxRedirects: 3,
		})
	case RedisSentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: c.RedisSentinelMaster, SentinelAddrs: trimAll(c.RedisSentinelAddrs),
			SentinelPassword: c.RedisSentinelPassword,
			Username:         o.Username, Password: o.Password, DB: o.DB, PoolSize: o.PoolSize,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			MaxRetries: o.MaxRetries, Dialer: o.Dialer,
		})
	}
	return redis.NewClient(o)
}

// tlsDialer dials Redis over TLS, verifying the certificate against the
// host of the address dialled.
func tlsDialer(timeout time.Duration, roots *x509.CertPool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("redis address %q: %w", addr, err)
		}
		d := &tls.Dialer{
			NetDialer: &net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Minute},
			Config:    &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, RootCAs: roots},
		}
		return d.DialContext(ctx, network, addr)
	}
}

// redisRootCAs reads REDIS_TLS_CA: nil (the system's CAs) when it is
// empty. On error the pool is empty, so that nothing is trusted.
func (c *Config) redisRootCAs() (*x509.CertPool, error) {
	if c.RedisTLSCA == "" {
		return nil, nil
	}
	roots := x509.NewCertPool()
	pem, err := os.ReadFile(c.RedisTLSCA)
	if err != nil {
		return roots, fmt.Errorf("read CA file: %w", err)
	}
	if !roots.AppendCertsFromPEM(pem) {
		return roots, fmt.Errorf("no PEM certificate in %s", c.RedisTLSCA)
	}
	return roots, nil
}

func trimAll(list []string) []string {
	out := make([]string, 0, len(list))
	for _, s := range list {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// RedisOptions returns the go-redis options for one Redis server
// (REDIS_HOST, REDIS_PORT); RedisClient builds on them for every mode.
func (c *Config) RedisOptions() *redis.Options {
	o := &redis.Options{
		Addr:     net.JoinHostPort(c.RedisHost, strconv.Itoa(c.RedisPort)),
		Username: c.RedisUsername,
		Password: c.RedisPassword,
		DB:       c.RedisDB,
		PoolSize: c.RedisPoolSize,
		// Fail fast while Redis is down: callers answer "broker unavailable"
		// and retry, rather than queue behind long dial timeouts.
		DialTimeout:  2 * time.Second,
		ReadTimeout:  3 * time.Second,
		WriteTimeout: 3 * time.Second,
		// No automatic retries: a PUBLISH or a registration that timed out
		// may still run once Redis answers, and a retry would run it twice.
		// DMB's loops retry what is safe to retry.
		MaxRetries: -1,
	}
	if c.RedisTLS {
		roots, _ := c.redisRootCAs() // checked by Validate
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.RedisHost, RootCAs: roots}
	}
	return o
}

// NewLogger returns the slog logger that DMB_LOG_LEVEL and DMB_LOG_FORMAT
// ask for, writing to standard error, and its level, which can be changed
// while it runs.
func NewLogger(level, format string) (*slog.Logger, *slog.LevelVar, error) {
	lv, err := levelOf(level)
	if err != nil {
		return nil, nil, fmt.Errorf("DMB_LOG_LEVEL: %w", err)
	}
	if !validFormat(format) {
		return nil, nil, errors.New("DMB_LOG_FORMAT must be text or json")
	}
	return newLogger(lv, format), lv, nil
}

// StartupLogger is the logger for what goes wrong before the settings are
// read: DMB_LOG_FORMAT and DMB_LOG_LEVEL as far as they are valid, text and
// info otherwise, so that even a bad setting is reported in the format
// the operator's tools expect.
func StartupLogger() *slog.Logger {
	lv, err := levelOf(os.Getenv("DMB_LOG_LEVEL"))
	if err != nil || os.Getenv("DMB_LOG_LEVEL") == "" {
		lv = new(slog.LevelVar)
	}
	format := os.Getenv("DMB_LOG_FORMAT")
	if !validFormat(format) {
		format = "text"
	}
	return newLogger(lv, format)
}

func levelOf(level string) (*slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, err
	}
	return lv, nil
}

func validFormat(format string) bool {
	switch strings.ToLower(format) {
	case "text", "", "json":
		return true
	}
	return false
}

func newLogger(lv *slog.LevelVar, format string) *slog.Logger {
	o := &slog.HandlerOptions{Level: lv}
	if strings.ToLower(format) == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, o))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, o))
}
