package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// docs/configuration.md lists every setting with its default; this keeps
// the two in step.
func TestConfigurationDocListsEverySettingWithItsDefault(t *testing.T) {
	readme, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([A-Z0-9_]+)` \\| ([^|]*) \\|")
	documented := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = strings.TrimSpace(m[2])
	}
	typ := reflect.TypeOf(Config{})
	fields := map[string]bool{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, def := f.Tag.Get("envconfig"), f.Tag.Get("default")
		if name == "" {
			continue
		}
		fields[name] = true
		cell, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("%s is not in docs/configuration.md's settings table", name)
		case def == "" && !strings.HasPrefix(cell, "*(empty"):
			t.Errorf("%s: docs/configuration.md default %q, want *(empty...)*", name, cell)
		case def != "" && !strings.HasPrefix(cell, "`"+def+"`"):
			t.Errorf("%s: docs/configuration.md default %q, want `%s`", name, cell, def)
		}
	}
	for name := range documented {
		if strings.HasPrefix(name, "DMB_") || strings.HasPrefix(name, "REDIS_") {
			if !fields[name] {
				t.Errorf("docs/configuration.md documents %s, which DMB does not read", name)
			}
		}
	}
}
