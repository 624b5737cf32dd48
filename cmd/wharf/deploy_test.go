package main

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// exportedMetrics is every metric name Wharf's code defines: the string
// literals naming wharf_ metrics in its non-test sources.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	name := regexp.MustCompile(`^wharf_[a-z0-9_]+$`)
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "bin" || strings.HasPrefix(d.Name(), ".")) && path != "../.." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && name.MatchString(s) {
					names[s] = true
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// usedMetrics are the wharf_ metric names a PromQL expression reads, a
// histogram's series (_bucket, _sum, _count) counted as the histogram.
func usedMetrics(expr string, exported map[string]bool) []string {
	var out []string
	for _, m := range regexp.MustCompile(`wharf_[a-z0-9_]+`).FindAllString(expr, -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(m, suffix); ok && exported[base] {
				m = base
			}
		}
		out = append(out, m)
	}
	return out
}

// The Grafana dashboard and the Prometheus alerts read only metrics Wharf
// exports, and each is well formed: a dashboard that decodes with panels
// that each query something, alerts that each have a name, an
// expression, a severity and a summary.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	if !exported["wharf_fills_in_flight"] || !exported["wharf_upstream_up"] {
		t.Fatalf("the metric scan found too little: %v", exported)
	}
	var exprs []string

	raw, err := os.ReadFile("../../deploy/grafana/wharf.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&dash); err != nil || dash.Title == "" || len(dash.Panels) < 8 {
		t.Fatalf("dashboard: %v, %q with %d panels", err, dash.Title, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("panel %q has no title or no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}

	raw, err = os.ReadFile("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert       string
				Expr        string
				For         string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	yd := yaml.NewDecoder(bytes.NewReader(raw))
	yd.KnownFields(true)
	if err := yd.Decode(&rules); err != nil || len(rules.Groups) == 0 {
		t.Fatalf("alerts: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %q: name, expr, severity and summary are required", r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}

	for _, e := range exprs {
		used := usedMetrics(e, exported)
		if len(used) == 0 {
			t.Errorf("%q reads no Wharf metric", e)
		}
		for _, m := range used {
			if !exported[m] {
				t.Errorf("%q reads %s, which Wharf does not export", e, m)
			}
		}
	}
}
