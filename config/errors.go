package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// SettingError is one setting DMB cannot start with: the variable, the value
// it had and the form it accepts.
type SettingError struct {
	Name  string // the environment variable, such as DMB_SEND_QUEUE
	Value string // its value, "" when unset; hidden for secrets
	Want  string // what DMB accepts, such as "a whole number, at least 1"
}

func (e SettingError) Error() string {
	return fmt.Sprintf("%s=%q: want %s", e.Name, e.Value, e.Want)
}

// Errors is every setting DMB cannot start with, so that a user fixes them
// all at once. Load and Validate return it; errors.As finds it behind a
// wrapping.
type Errors []SettingError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return "bad settings: " + strings.Join(lines, "; ")
}

// secrets are the settings whose values are never echoed.
var secrets = map[string]bool{
	"DMB_JWT_SECRET": true, "DMB_ADMIN_TOKEN": true, "REDIS_PASSWORD": true, "REDIS_SENTINEL_PASSWORD": true,
}

// bad makes the SettingError of name, whose value is v.
func bad(name string, v any, want string, args ...any) SettingError {
	value := fmt.Sprint(v)
	if s, ok := v.([]string); ok {
		value = strings.Join(s, ",")
	}
	if secrets[name] && value != "" {
		value = "(hidden)"
	}
	return SettingError{Name: name, Value: value, Want: fmt.Sprintf(want, args...)}
}

// readEnv fills c from the environment one setting at a time, with
// envconfig, so that every value it cannot parse is reported, not only the
// first.
func readEnv(c *Config) Errors {
	var errs Errors
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("envconfig") == "" {
			continue
		}
		one := reflect.New(reflect.StructOf([]reflect.StructField{{Name: f.Name, Type: f.Type, Tag: f.Tag}}))
		if err := envconfig.Process("", one.Interface()); err != nil {
			var pe *envconfig.ParseError
			if !errors.As(err, &pe) {
				errs = append(errs, bad(f.Tag.Get("envconfig"), "", "a value DMB can read (%v)", err))
				continue
			}
			errs = append(errs, bad(pe.KeyName, pe.Value, "%s", form(f.Type, f.Tag.Get("default"))))
			continue
		}
		v.Field(i).Set(one.Elem().Field(0))
	}
	return errs
}

// form says in words what a setting of type t accepts.
func form(t reflect.Type, def string) string {
	example := ""
	if def != "" {
		example = ", such as " + def
	}
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "a duration: a number with a unit (ms, s, m, h)" + example
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "a whole number" + example
	case t.Kind() == reflect.Slice:
		return "a comma-separated list"
	}
	return "a " + t.String()
}
