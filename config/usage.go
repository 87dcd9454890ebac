package config

import (
	"fmt"
	"io"
	"reflect"
)

// Setting is one environment variable DMB reads.
type Setting struct {
	Name    string // DMB_PORT
	Default string // "" when empty
	Desc    string
}

// Settings lists every setting in the order of Config.
func Settings() []Setting {
	var out []Setting
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		f := t.Field(i)
		if name := f.Tag.Get("envconfig"); name != "" {
			out = append(out, Setting{Name: name, Default: f.Tag.Get("default"), Desc: f.Tag.Get("desc")})
		}
	}
	return out
}

// WriteUsage writes every setting with its default and meaning, for
// `dmb -h`.
func WriteUsage(w io.Writer) error {
	if _, err := fmt.Fprintln(w, "Settings, from the environment (docs/configuration.md has each in full):"); err != nil {
		return err
	}
	for _, s := range Settings() {
		def := s.Default
		if def == "" {
			def = "(empty)"
		}
		if _, err := fmt.Fprintf(w, "  %s  default %s\n    \t%s\n", s.Name, def, s.Desc); err != nil {
			return err
		}
	}
	return nil
}
