package main

import (
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// configCmd is `wharf config check` (load and validate a file as serve
// would, without serving it) and `wharf config print` (the effective
// configuration: the file with every default filled in, secrets hidden).
func configCmd(args []string, stdout, stderr io.Writer) error {
	fs := newCommand("config", stdout, stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) != 1 || (rest[0] != "check" && rest[0] != "print") || *path == "" {
		return usagef("config", "usage: wharf config (check | print) --config FILE")
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	if rest[0] == "check" {
		fmt.Fprintf(stdout, "%s: ok (%d upstreams, %d targets, %d replication rules)\n", *path, len(cfg.Upstreams), len(cfg.Targets), len(cfg.Replication))
		return nil
	}
	return printConfig(stdout, cfg)
}

// secretKeys are hidden by config print: what the file or the environment
// gave them stays off terminals and tickets.
var secretKeys = []string{"password", "secretkey", "accesskey", "sessiontoken", "token"}

// printConfig writes cfg as YAML under the file's own key names.
func printConfig(w io.Writer, cfg *fileConfig) error {
	var node yaml.Node
	if err := node.Encode(cfg); err != nil {
		return err
	}
	hideSecrets(&node)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&node); err != nil {
		return err
	}
	return enc.Close()
}

func hideSecrets(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i], n.Content[i+1]; slices.Contains(secretKeys, k.Value) && v.Kind == yaml.ScalarNode && v.Value != "" {
				v.SetString("(hidden)")
			}
		}
	}
	for _, c := range n.Content {
		hideSecrets(c)
	}
}

// keyish finds the configuration keys an error message names:
// `storage.max_size`, `upstreams[1]`, `tag_ttl`.
var keyish = regexp.MustCompile(`[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*`)

// namedItem is the upstream or target an error is about.
var namedItem = regexp.MustCompile(`^(upstream|target) (\S+?):`)

// keyLine is the line of the key err names in the file raw, 0 when none
// is found: an error of validate names keys, not lines.
func keyLine(raw []byte, msg string) int {
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) != nil || len(doc.Content) == 0 {
		return 0
	}
	scope := doc.Content[0]
	if m := namedItem.FindStringSubmatch(msg); m != nil {
		if item := namedEntry(scope, m[1]+"s", m[2]); item != nil {
			scope = item
			msg = msg[len(m[0]):]
		}
	}
	known := map[string]bool{}
	for _, k := range configKeyNames(reflect.TypeFor[fileConfig](), map[reflect.Type]bool{}) {
		known[k] = true
	}
	for _, tok := range keyish.FindAllString(msg, -1) {
		if line := pathLine(scope, tok); line > 0 {
			return line
		}
		if leaf := tok[strings.LastIndex(tok, ".")+1:]; known[leaf] {
			if line := findKey(scope, leaf); line > 0 {
				return line
			}
		}
	}
	if scope != doc.Content[0] {
		return scope.Line
	}
	return 0
}

// namedEntry is the item of list key whose name is name.
func namedEntry(root *yaml.Node, key, name string) *yaml.Node {
	list := mapValue(root, key)
	if list == nil || list.Kind != yaml.SequenceNode {
		return nil
	}
	for _, item := range list.Content {
		if n := mapValue(item, "name"); n != nil && n.Value == name {
			return item
		}
	}
	return nil
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// pathLine resolves a.b[2].c from n: the line of its last key (or item).
func pathLine(n *yaml.Node, path string) int {
	line := 0
	for _, part := range strings.Split(path, ".") {
		key, idx, hasIdx := strings.Cut(strings.TrimSuffix(part, "]"), "[")
		if n == nil || n.Kind != yaml.MappingNode {
			return 0
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				line, n, found = n.Content[i].Line, n.Content[i+1], true
				break
			}
		}
		if !found {
			return 0
		}
		if hasIdx {
			i, err := strconv.Atoi(idx)
			if err != nil || n.Kind != yaml.SequenceNode || i >= len(n.Content) {
				return 0
			}
			n = n.Content[i]
			line = n.Line
		}
	}
	return line
}

// findKey is the line of the first key named key under n.
func findKey(n *yaml.Node, key string) int {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i].Line
			}
		}
	}
	for _, c := range n.Content {
		if line := findKey(c, key); line > 0 {
			return line
		}
	}
	return 0
}
