// Package flagvalue has flag.Value types for the composite flags of Ambit's commands,
// so that the package owning a Config can register its flags on typed fields, with the
// Config's defaults shown in -help and bad input refused while the flags are parsed.
package flagvalue

import (
	"errors"
	"flag"
	"strconv"
	"strings"
)

// List is a comma-separated list: "eth0, eth1" sets [eth0 eth1]; blanks around items
// and empty items are dropped.
type List []string

// ListVar returns p as a flag.Value.
func ListVar(p *[]string) flag.Value { return (*List)(p) }

func (l *List) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

// Set replaces the list: a repeated flag is the last one given, like any other flag.
// An empty value sets an empty list, not a nil one, so that a Config's WithDefaults can
// tell "none" from "unset".
func (l *List) Set(s string) error {
	if *l = Split(s); *l == nil {
		*l = List{}
	}
	return nil
}

// Split splits a comma-separated list, dropping blanks around items and empty items.
func Split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Uint32 is a 32-bit unsigned number, decimal or with a 0x/0o/0b prefix; shown in hex
// (packet marks and masks are bit fields).
type Uint32 uint32

// Uint32Var returns p as a flag.Value.
func Uint32Var(p *uint32) flag.Value { return (*Uint32)(p) }

func (u *Uint32) String() string {
	if u == nil {
		return "0"
	}
	return "0x" + strconv.FormatUint(uint64(*u), 16)
}

func (u *Uint32) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return errors.New("value out of range (32 bits)")
		}
		return errors.New("parse error")
	}
	*u = Uint32(v)
	return nil
}

// KeyValue is a "key=value" pair with neither part empty, e.g. a label.
type KeyValue struct {
	Key, Value *string
}

// KeyValueVar returns a flag.Value that sets *key and *value.
func KeyValueVar(key, value *string) flag.Value { return &KeyValue{Key: key, Value: value} }

func (kv *KeyValue) String() string {
	if kv == nil || kv.Key == nil || kv.Value == nil {
		return ""
	}
	return *kv.Key + "=" + *kv.Value
}

func (kv *KeyValue) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" || v == "" {
		return errors.New("want key=value")
	}
	*kv.Key, *kv.Value = k, v
	return nil
}
