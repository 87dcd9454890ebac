package deploy_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dmb-broker/dmb/config"
)

// No Docker engine or cluster runs the files below in CI, so these tests
// hold them to what the rest of the project promises.

// settings are the environment variables DMB reads.
func settings() map[string]string {
	out := map[string]string{}
	typ := reflect.TypeOf(config.Config{})
	for i := range typ.NumField() {
		if name := typ.Field(i).Tag.Get("envconfig"); name != "" {
			out[name] = typ.Field(i).Tag.Get("default")
		}
	}
	return out
}

func checkSettings(t *testing.T, where string, env map[string]string, extra ...string) {
	t.Helper()
	known := settings()
	for k := range env {
		if _, ok := known[k]; !ok && !contains(extra, k) {
			t.Errorf("%s sets %s, which DMB does not read", where, k)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func shutdownTimeout(t *testing.T, env map[string]string) time.Duration {
	v := env["DMB_SHUTDOWN_TIMEOUT"]
	if v == "" {
		v = settings()["DMB_SHUTDOWN_TIMEOUT"]
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("DMB_SHUTDOWN_TIMEOUT %q: %v", v, err)
	}
	return d
}

type composeService struct {
	Image           string            `yaml:"image"`
	Build           any               `yaml:"build"`
	Entrypoint      []string          `yaml:"entrypoint"`
	Environment     map[string]string `yaml:"environment"`
	Ports           []string          `yaml:"ports"`
	Expose          []string          `yaml:"expose"`
	Volumes         []string          `yaml:"volumes"`
	Healthcheck     map[string]any    `yaml:"healthcheck"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	DependsOn       map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

func TestComposeRunsDMBBehindTheProxyNextToRedis(t *testing.T) {
	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]composeService `yaml:"services"`
		Volumes  map[string]any            `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	redis, dmb, demo, proxy := c.Services["redis"], c.Services["dmb"], c.Services["demo"], c.Services["proxy"]
	if redis.Healthcheck == nil || len(redis.Volumes) == 0 {
		t.Errorf("redis needs a healthcheck and a volume: %+v", redis)
	}
	if dmb.Build == nil || dmb.DependsOn["redis"].Condition != "service_healthy" {
		t.Errorf("dmb must be built here and wait for a healthy redis: %+v", dmb)
	}
	if len(dmb.Ports) != 0 {
		t.Errorf("dmb publishes %v: only the proxy may be reachable", dmb.Ports)
	}
	checkSettings(t, "compose dmb", dmb.Environment)
	if grace, err := time.ParseDuration(dmb.StopGracePeriod); err != nil || grace <= shutdownTimeout(t, dmb.Environment) {
		t.Errorf("stop_grace_period %q must exceed DMB_SHUTDOWN_TIMEOUT", dmb.StopGracePeriod)
	}
	if len(demo.Entrypoint) == 0 || !strings.HasSuffix(demo.Entrypoint[0], "/dmb-demo") || demo.Image != dmb.Image {
		t.Errorf("demo must run dmb-demo from the dmb image: %+v", demo)
	}
	checkSettings(t, "compose demo", demo.Environment, "DEMO_HTTP_ADDR")
	if !contains(proxy.Ports, "${DMB_HTTPS_PORT:-443}:443") || proxy.DependsOn["dmb"].Condition != "service_healthy" {
		t.Errorf("proxy must publish 443 and wait for a healthy dmb: %+v", proxy)
	}
	// The proxy's upstreams are the compose services, on their ports.
	upstreams, err := os.ReadFile("nginx/compose.conf")
	if err != nil {
		t.Fatal(err)
	}
	port := dmb.Environment["DMB_PORT"]
	for _, want := range []string{"server dmb:" + port + ";", "server demo:" + strings.TrimPrefix(demo.Environment["DEMO_HTTP_ADDR"], ":") + ";"} {
		if !strings.Contains(string(upstreams), want) {
			t.Errorf("nginx/compose.conf lacks %q", want)
		}
	}
	for _, v := range proxy.Volumes {
		if src := strings.SplitN(v, ":", 2)[0]; strings.HasPrefix(src, "./") {
			if _, err := os.Stat("../" + src); err != nil {
				t.Errorf("proxy mounts %s: %v", src, err)
			}
		}
	}
}

func TestDockerfileBuildsAStaticNonRootImage(t *testing.T) {
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^FROM golang:\S+ AS build$`),
		regexp.MustCompile(`(?m)^RUN sh scripts/build.sh /out `),
		regexp.MustCompile(`(?m)^FROM gcr.io/distroless/static\S*:nonroot$`),
		regexp.MustCompile(`(?m)^USER nonroot`),
		regexp.MustCompile(`(?m)^EXPOSE 8082$`),
		regexp.MustCompile(`(?m)^HEALTHCHECK .*\n?.*"-healthcheck"`),
	} {
		if !want.MatchString(df) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	script, err := os.ReadFile("../scripts/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version="} {
		if !strings.Contains(string(script), want) {
			t.Errorf("scripts/build.sh lacks %s", want)
		}
	}
}

func TestKubernetesShutdownFitsTheGracePeriod(t *testing.T) {
	raw, err := os.ReadFile("kubernetes/dmb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]map[string]any{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kinds[doc["kind"].(string)] = doc
	}
	for _, k := range []string{"Deployment", "Service", "PodDisruptionBudget"} {
		if kinds[k] == nil {
			t.Fatalf("no %s", k)
		}
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec struct {
					Grace      int `yaml:"terminationGracePeriodSeconds"`
					Containers []struct {
						Env []struct {
							Name  string `yaml:"name"`
							Value string `yaml:"value"`
						} `yaml:"env"`
						Readiness struct {
							HTTPGet struct{ Path string } `yaml:"httpGet"`
						} `yaml:"readinessProbe"`
						Liveness struct {
							HTTPGet struct{ Path string } `yaml:"httpGet"`
						} `yaml:"livenessProbe"`
						Lifecycle struct {
							PreStop struct {
								Sleep struct{ Seconds int } `yaml:"sleep"`
							} `yaml:"preStop"`
						} `yaml:"lifecycle"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	b, _ := yaml.Marshal(kinds["Deployment"])
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	checkSettings(t, "kubernetes", env)
	if c.Readiness.HTTPGet.Path != "/readyz" || c.Liveness.HTTPGet.Path != "/healthz" {
		t.Errorf("probes %q %q", c.Readiness.HTTPGet.Path, c.Liveness.HTTPGet.Path)
	}
	need := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second + shutdownTimeout(t, env)
	if grace := time.Duration(pod.Grace) * time.Second; c.Lifecycle.PreStop.Sleep.Seconds == 0 || grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v must exceed preStop + DMB_SHUTDOWN_TIMEOUT (%v)", grace, need)
	}
}

func TestSystemdStopTimeoutExceedsTheShutdownTimeout(t *testing.T) {
	raw, err := os.ReadFile("systemd/dmb.service")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^Environment=(\w+)=(.*)$`).FindAllStringSubmatch(string(raw), -1) {
		env[m[1]] = m[2]
	}
	checkSettings(t, "systemd", env)
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(string(raw))
	if m == nil {
		t.Fatal("no TimeoutStopSec")
	}
	stop, err := time.ParseDuration(m[1])
	if err != nil || stop <= shutdownTimeout(t, env) {
		t.Errorf("TimeoutStopSec %s must exceed DMB_SHUTDOWN_TIMEOUT", m[1])
	}
	for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "Environment=DMB_BIND=127.0.0.1"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("unit lacks %s", want)
		}
	}
}

// Every file a user copies to deploy says what to change for production.
func TestEveryDeployFileSaysWhatToChangeForProduction(t *testing.T) {
	for _, path := range []string{
		"../docker-compose.yml", "../Dockerfile", "nginx/dmb.conf", "nginx/upstreams.conf", "nginx/compose.conf",
		"apache/dmb.conf", "firewall/nftables.conf", "systemd/dmb.service", "systemd/dmb.env", "kubernetes/dmb.yaml",
	} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "# For production: ") {
			t.Errorf("%s has no line saying what to change for production", path)
		}
	}
}

// The settings file the systemd unit reads is in the repository, and sets
// only what DMB reads.
func TestSystemdSettingsFileExistsAndNamesRealSettings(t *testing.T) {
	unit, err := os.ReadFile("systemd/dmb.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "EnvironmentFile=-/etc/dmb/dmb.env") || !strings.Contains(string(unit), "deploy/systemd/dmb.env") {
		t.Fatal("dmb.service does not read /etc/dmb/dmb.env or does not say it comes from deploy/systemd/dmb.env")
	}
	b, err := os.ReadFile("systemd/dmb.env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		if k, v, ok := strings.Cut(line, "="); ok && regexp.MustCompile(`^[A-Z][A-Z0-9_]+$`).MatchString(k) {
			env[k] = v
		}
	}
	if len(env) == 0 {
		t.Fatal("dmb.env sets nothing")
	}
	checkSettings(t, "systemd/dmb.env", env)
}

// The files the deploy comments tell users to copy exist; the published
// ports can be moved; the Kubernetes image is not one that looks pullable
// but is not.
func TestDeployCommentsNameRealFilesAndChoices(t *testing.T) {
	nginx, err := os.ReadFile("nginx/dmb.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`deploy/[a-z/]+\.conf`).FindAllString(string(nginx), -1) {
		if _, err := os.Stat("../" + m); err != nil {
			t.Errorf("nginx/dmb.conf names %s: %v", m, err)
		}
	}
	compose, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"DMB_HTTPS_PORT", "DMB_HTTP_PORT"} {
		if strings.Count(string(compose), v) < 2 {
			t.Errorf("docker-compose.yml: the host port %s is not both used and explained", v)
		}
	}
	k8s, err := os.ReadFile("kubernetes/dmb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(k8s), "image: dmb:latest") || !strings.Contains(string(k8s), "docker push") {
		t.Error("kubernetes/dmb.yaml must name an image the user builds and pushes, and say how")
	}
}
