package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The README lists every setting with its default; this keeps the two in
// step.
func TestREADMEListsEverySettingWithItsDefault(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
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
			t.Errorf("%s is not in the README's settings table", name)
		case def == "" && !strings.HasPrefix(cell, "*(empty"):
			t.Errorf("%s: README default %q, want *(empty...)*", name, cell)
		case def != "" && !strings.HasPrefix(cell, "`"+def+"`"):
			t.Errorf("%s: README default %q, want `%s`", name, cell, def)
		}
	}
	for name := range documented {
		if strings.HasPrefix(name, "DMB_") || strings.HasPrefix(name, "REDIS_") {
			if !fields[name] {
				t.Errorf("README documents %s, which DMB does not read", name)
			}
		}
	}
}
