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
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "sigs.k8s.io/yaml"
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

// The Kubernetes manifests decode strictly into the API's own types (a
// misspelt field fails), kustomize lists every one of them, their pods
// run as non-root on a read-only root filesystem with probes on /healthz,
// and the configuration they mount is one this Wharf loads.
func TestKubernetesManifests(t *testing.T) {
	dir := "../../deploy/kubernetes"
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var kust struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Labels     []struct {
			Pairs            map[string]string `json:"pairs"`
			IncludeSelectors bool              `json:"includeSelectors"`
		} `json:"labels"`
		Resources []string `json:"resources"`
	}
	if err := k8syaml.UnmarshalStrict(raw, &kust); err != nil || kust.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if len(kust.Resources) != len(files)-1 {
		t.Fatalf("kustomization lists %v; the directory has %v", kust.Resources, files)
	}
	kinds := map[string]int{}
	var pods []corev1.PodSpec
	for _, f := range kust.Resources {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			var meta metav1.TypeMeta
			if err := k8syaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var obj any
			switch meta.Kind {
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "Service":
				obj = &corev1.Service{}
			case "StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			case "CronJob":
				obj = &batchv1.CronJob{}
			default:
				t.Fatalf("%s: unexpected kind %q", f, meta.Kind)
			}
			if err := k8syaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s (%s): %v", f, meta.Kind, err)
			}
			switch o := obj.(type) {
			case *corev1.ConfigMap:
				t.Setenv("S3_ACCESS_KEY", "k")
				t.Setenv("S3_SECRET_KEY", "s")
				t.Setenv("POD_IP", "10.0.0.7")
				// The Secret's file, mounted where the ConfigMap says.
				peer := filepath.Join(t.TempDir(), "secret")
				os.WriteFile(peer, []byte("0123456789abcdef0123"), 0o400)
				body := strings.Replace(o.Data["wharf.yml"], "/run/secrets/wharf-peer/secret", peer, 1)
				cfg, err := loadConfig(writeConfig(t, body))
				if err != nil || cfg.Storage.Driver != "s3" || cfg.Cluster == nil || cfg.Cluster.Advertise != "http://10.0.0.7:5000" {
					t.Errorf("the ConfigMap's wharf.yml: %v", err)
				}
			case *appsv1.StatefulSet:
				pods = append(pods, o.Spec.Template.Spec)
			case *batchv1.CronJob:
				pods = append(pods, o.Spec.JobTemplate.Spec.Template.Spec)
			}
			kinds[meta.Kind]++
		}
	}
	for kind, n := range map[string]int{"ConfigMap": 1, "Service": 2, "StatefulSet": 1, "PodDisruptionBudget": 1, "CronJob": 1} {
		if kinds[kind] != n {
			t.Errorf("%d %s, want %d", kinds[kind], kind, n)
		}
	}
	if len(pods) != 2 {
		t.Fatalf("%d pod templates, want the StatefulSet's and the CronJob's", len(pods))
	}
	t.Run("pods", func(t *testing.T) {
		for _, p := range pods {
			for _, c := range p.Containers {
				sc := c.SecurityContext
				if p.SecurityContext == nil || p.SecurityContext.RunAsNonRoot == nil || !*p.SecurityContext.RunAsNonRoot ||
					sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
					sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("container %s: must run as non-root, read-only, without privilege escalation", c.Name)
				}
				if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
					t.Errorf("container %s: memory requests and limits", c.Name)
				}
				if len(c.Args) == 0 || (c.Args[0] != "serve" && c.Args[0] != "gc") {
					t.Errorf("container %s: args %v are no wharf command", c.Name, c.Args)
				}
				if c.Args[0] == "serve" && (c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" ||
					c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz") {
					t.Errorf("container %s: readiness and liveness on /healthz", c.Name)
				}
			}
		}
	})
}
