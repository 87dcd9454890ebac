package node_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/internal/testcert"
)

func TestANodeTalksToRedisOverTLS(t *testing.T) {
	cert := testcert.New(t)
	tlsPort := redistest.FreePort(t)
	// The plain port stays for the test's own tools; the node uses TLS.
	r := redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort),
		"--tls-cert-file", cert.CertFile, "--tls-key-file", cert.KeyFile,
		"--tls-ca-cert-file", cert.CertFile, "--tls-auth-clients", "no")
	e := &env{t: t, redis: r, rdb: r.Client(), topo: single(r)}
	overTLS := func(c *config.Config) {
		c.RedisHost, c.RedisPort, c.RedisTLS, c.RedisTLSCA = "localhost", tlsPort, true, cert.CertFile
	}
	n := e.startNode(overTLS)
	b := e.startBackend("chat")
	c := connect(t, n, "chat").welcome()
	b.next(ofTypeCID("client_connected", c.cid))
	c.send(`{"event":"dmb:message","data":"over tls","id":1}`)
	if ev := b.next(ofTypeCID("message", c.cid)); string(ev.Data) != `"over tls"` {
		t.Fatalf("message = %+v", ev)
	}
	c.nextEvent("dmb:ack")
	b.publish(t, `{"type":"broadcast","data":"back"}`)
	if f := c.nextEvent("dmb:broadcast"); string(f.Data) != `"back"` {
		t.Fatalf("broadcast = %+v", f)
	}
	// The node's subscriptions are on the TLS port, where only TLS is
	// spoken.
	clients, err := e.rdb.ClientList(e.ctx()).Result()
	if err != nil {
		t.Fatal(err)
	}
	onTLS := 0
	for _, line := range strings.Split(clients, "\n") {
		if strings.Contains(line, " cmd=psubscribe ") {
			if !strings.Contains(line, " laddr=127.0.0.1:"+strconv.Itoa(tlsPort)+" ") {
				t.Fatalf("the downlink subscription is not on the TLS port %d: %s", tlsPort, line)
			}
			onTLS++
		}
	}
	if onTLS != 1 {
		t.Fatalf("%d downlink subscriptions on the TLS port, want 1:\n%s", onTLS, clients)
	}

	// Without the CA, Redis's certificate is not trusted.
	cfg := e.baseConfig()
	overTLS(&cfg)
	cfg.RedisTLSCA = ""
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rdb := cfg.RedisClient()
	defer rdb.Close()
	if err := rdb.Ping(e.ctx()).Err(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("ping without the CA: %v, want a certificate error", err)
	}
}
