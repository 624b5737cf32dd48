package main

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// acceptedKeys are the configuration keys loadConfig takes, as dotted
// paths ("upstreams[].tag_ttl"), read from the yaml tags. A map is a key
// of its own (storage.s3: distribution's parameters; rename: prefixes).
func acceptedKeys(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || (tag == "" && !f.Anonymous) || !f.IsExported() && !strings.Contains(opts, "inline") {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if strings.Contains(opts, "inline") {
			keys = append(keys, acceptedKeys(ft, prefix)...)
			continue
		}
		key := prefix + name
		switch {
		case ft.Kind() == reflect.Struct && ft.PkgPath() != "time":
			keys = append(keys, acceptedKeys(ft, key+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			keys = append(keys, acceptedKeys(ft.Elem(), key+"[].")...)
		default:
			keys = append(keys, key)
		}
	}
	return keys
}

var (
	tableKey   = regexp.MustCompile("^\\| (`[^|]*) \\|")
	backticked = regexp.MustCompile("`([^`]+)`")
	yamlKey    = regexp.MustCompile(`^\s*(?:#\s*)*(?:-\s+)?([a-z][a-z0-9_]*):(?:\s|$)`)
)

// documentedKeys are the keys the configuration reference's table names:
// a row's first cell, where a name without a dot takes the prefix of the
// cell's first key, and for a row of a list ("replication[]"), the names
// its meaning lists.
func documentedKeys(t *testing.T) []string {
	raw, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for line := range strings.SplitSeq(string(raw), "\n") {
		m := tableKey.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		prefix := ""
		for i, k := range backticked.FindAllStringSubmatch(m[1], -1) {
			name := k[1]
			if i == 0 {
				if j := strings.LastIndexAny(name, ".]"); j >= 0 {
					prefix = name[:j+1]
				}
			} else if !strings.ContainsAny(name, ".[") {
				name = prefix + name
			}
			keys = append(keys, name)
			if strings.HasSuffix(name, "[]") {
				meaning := strings.SplitN(line, "|", 5)[3]
				for _, sub := range backticked.FindAllStringSubmatch(meaning, -1) {
					if regexp.MustCompile(`^[a-z_]+$`).MatchString(sub[1]) {
						keys = append(keys, name+"."+sub[1])
					}
				}
			}
		}
	}
	return keys
}

// exampleKeys are the key names config.example.yml shows, its commented
// ones included.
func exampleKeys(t *testing.T) []string {
	raw, err := os.ReadFile("../../config.example.yml")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for line := range strings.SplitSeq(string(raw), "\n") {
		if m := yamlKey.FindStringSubmatch(line); m != nil {
			keys = append(keys, m[1])
		}
	}
	return keys
}

// Every key the code takes is in config.example.yml and in the
// configuration reference, and neither names a key the code does not
// take.
func TestConfigKeysAreDocumented(t *testing.T) {
	accepted := acceptedKeys(reflect.TypeFor[fileConfig](), "")
	documented, example := documentedKeys(t), exampleKeys(t)
	last := func(k string) string { return k[strings.LastIndexAny(k, ".]")+1:] }
	var names []string // every element of every key
	for _, k := range accepted {
		names = append(names, strings.FieldsFunc(k, func(r rune) bool { return r == '.' || r == '[' || r == ']' })...)
		if !slices.Contains(documented, k) {
			t.Errorf("%s is not in docs/configuration.md", k)
		}
		if !slices.Contains(example, last(k)) {
			t.Errorf("%s is not in config.example.yml", k)
		}
	}
	for _, k := range documented {
		if !slices.Contains(accepted, k) && !strings.HasSuffix(k, "[]") {
			t.Errorf("docs/configuration.md names %s, which the configuration does not take", k)
		}
	}
	// storage.s3 takes distribution's parameters; the example names some.
	s3 := []string{"bucket", "region", "regionendpoint", "accesskey", "secretkey", "forcepathstyle", "rootdirectory", "secure", "chunksize"}
	for _, k := range example {
		if !slices.Contains(names, k) && !slices.Contains(s3, k) {
			t.Errorf("config.example.yml names %s, which the configuration does not take", k)
		}
	}
}
