package main

import (
	"go/build"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/wharf-registry/wharf/"

// TestImportGraph keeps imports pointing one way: cmd → server → proxy
// (/v2) and api (/api/v1), which share httpx and never import each other;
// api → replicate → cache → storage; cluster (the fleet) a leaf that
// server wires in; upstream wired in by cmd only; auth
// (who may do what) and route (patterns) beside them; oci, the protocol's
// shared facts, and audit, the audit trail, import nothing of ours and
// sit below all.
func TestImportGraph(t *testing.T) {
	allowed := map[string][]string{
		"oci":                   {},
		"audit":                 {},
		"storage":               {"oci"},
		"storage/s3test":        {"upstream/upstreamtest"},
		"upstream":              {"oci"},
		"upstream/upstreamtest": {},
		"route":                 {},
		"auth":                  {"route"},
		"cache":                 {"storage", "route", "oci"},
		"replicate":             {"cache", "storage", "route", "audit"},
		"httpx":                 {"auth", "cache", "oci"},
		"proxy":                 {"httpx", "cache", "auth", "route", "cluster", "oci", "audit"},
		"api":                   {"httpx", "cache", "auth", "replicate", "route", "oci", "cluster"},
		"server":                {"proxy", "api", "httpx", "cache", "auth", "replicate", "route", "storage", "cluster", "audit"},
		"cluster":               {},
	}
	for pkg, ok := range allowed {
		p, err := build.Default.ImportDir(filepath.Join("..", "..", pkg), 0)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			if dep := strings.TrimPrefix(imp, module); !slices.Contains(ok, dep) {
				t.Errorf("%s imports %s; allowed: %v", pkg, dep, ok)
			}
		}
	}
}
