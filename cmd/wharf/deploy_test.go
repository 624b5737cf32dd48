package main

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
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
// misspelt field fails), kustomize lists every one of them, and they pass
// checkManifests.
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
	var all strings.Builder
	for _, f := range kust.Resources {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		all.Write(raw)
		all.WriteString("\n---\n")
	}
	kinds := checkManifests(t, all.String(), "s3")
	want := map[string]int{"ConfigMap": 1, "Service": 2, "StatefulSet": 1, "PodDisruptionBudget": 1, "CronJob": 1, "NetworkPolicy": 1}
	if !maps.Equal(kinds, want) {
		t.Errorf("objects %v, want %v", kinds, want)
	}
}

// The Helm chart passes helm lint and renders, with its default values and
// with its example, into manifests that pass checkManifests: the example
// into the same objects deploy/kubernetes holds. Values that would make a
// replica fail or leak are refused at render time, with a message.
func TestHelmChart(t *testing.T) {
	helm := upstreamtest.Tool(t, "helm")
	chart := "../../deploy/helm/wharf"
	run := func(args ...string) (string, error) {
		out, err := exec.Command(helm, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("lint", "--strict", "--kube-version", "1.31.0", chart); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	if out, err := run("lint", "--strict", "--kube-version", "1.31.0", "-f", chart+"/ci/s3-cluster-values.yaml", chart); err != nil {
		t.Fatalf("helm lint with the example: %v\n%s", err, out)
	}
	render := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := run(append([]string{"template", "wharf", chart, "--kube-version", "1.31.0"}, args...)...)
		if err != nil {
			t.Fatalf("helm template: %v\n%s", err, out)
		}
		return out
	}
	t.Run("default", func(t *testing.T) {
		kinds := checkManifests(t, render(t), "filesystem")
		want := map[string]int{"ConfigMap": 1, "Service": 2, "StatefulSet": 1}
		if !maps.Equal(kinds, want) {
			t.Errorf("objects %v, want %v", kinds, want)
		}
	})
	t.Run("example", func(t *testing.T) {
		kinds := checkManifests(t, render(t, "-f", chart+"/ci/s3-cluster-values.yaml"), "s3")
		want := map[string]int{"ConfigMap": 1, "Service": 2, "StatefulSet": 1, "PodDisruptionBudget": 1, "CronJob": 1, "NetworkPolicy": 1}
		if !maps.Equal(kinds, want) {
			t.Errorf("objects %v, want %v", kinds, want)
		}
	})
	// For nodes: a NodePort, the Prometheus Operator's ServiceMonitor, and
	// the API token and htpasswd from existing Secrets by key.
	t.Run("nodes, monitoring, secrets", func(t *testing.T) {
		out := render(t, "--set", "service.type=NodePort", "--set", "service.nodePort=30555", "--set", "metrics.serviceMonitor.enabled=true",
			"--set", "api.tokenSecret=ci-token", "--set", "api.tokenKey=value", "--set", "auth.htpasswdSecret=users", "--set", "auth.htpasswdKey=users.htpasswd",
			"--set", "auth.rules[0].users[0]=ops", "--set", "auth.rules[0].api[0]=admin")
		kinds := checkManifests(t, out, "filesystem")
		want := map[string]int{"ConfigMap": 1, "Service": 2, "StatefulSet": 1, "ServiceMonitor": 1}
		if !maps.Equal(kinds, want) {
			t.Errorf("objects %v, want %v", kinds, want)
		}
		for _, s := range []string{"nodePort: 30555", "token_file: /run/secrets/wharf-api/value", "htpasswd: /run/secrets/wharf-htpasswd/users.htpasswd",
			"secretName: ci-token", "secretName: users", `prometheus.io/scrape: "true"`, "wharf.dev/service: headless"} {
			if !strings.Contains(out, s) {
				t.Errorf("rendered chart lacks %q", s)
			}
		}
		notes, err := run("install", "--dry-run=client", "wharf", chart, "--set", "service.type=NodePort", "--set", "service.nodePort=30555")
		if err != nil || !strings.Contains(notes, `[host."http://127.0.0.1:30555"]`) || strings.Contains(notes, `[host."http://wharf.`) || !strings.Contains(notes, "/ui/") {
			t.Errorf("NOTES for nodes (%v):\n%s", err, notes)
		}
	})
	for _, c := range []struct {
		name string
		set  []string
		want string
	}{
		{"bucket keys in values", []string{"storage.driver=s3", "storage.s3.bucket=b", "storage.s3.secretkey=x"}, "name a Secret in storage.s3Secret"},
		{"no bucket", []string{"storage.driver=s3"}, "storage.s3.bucket is required"},
		{"no peer secret", []string{"storage.driver=s3", "storage.s3.bucket=b", "replicas=3"}, "cluster.existingSecret is required"},
		{"unknown driver", []string{"storage.driver=gcs"}, "storage.driver must be filesystem or s3"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"template", "wharf", chart, "--kube-version", "1.31.0"}
			for _, s := range c.set {
				args = append(args, "--set", s)
			}
			out, err := run(args...)
			if err == nil || !strings.Contains(out, c.want) {
				t.Fatalf("rendered (%v), want a refusal saying %q:\n%s", err, c.want, out)
			}
		})
	}
}

// checkManifests decodes every object of a multi-document YAML strictly
// into the Kubernetes API's types and counts them by kind. It checks that
// the pods run as non-root on a read-only root filesystem with memory
// bounds and probes on /healthz, that the ConfigMap's wharf.yml is one this
// Wharf loads with the given storage driver, and that every container has
// the environment variables and secret mounts that configuration names.
func checkManifests(t *testing.T, all, driver string) map[string]int {
	t.Helper()
	kinds := map[string]int{}
	var pods []corev1.PodSpec
	var config string
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(all, -1) {
		var meta metav1.TypeMeta
		if err := k8syaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%v:\n%s", err, doc)
		}
		var obj any
		switch meta.Kind {
		case "":
			continue // comments only
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
		case "NetworkPolicy":
			obj = &networkingv1.NetworkPolicy{}
		case "ServiceMonitor": // a CRD: its fields are checked where it is rendered
			obj = &map[string]any{}
		default:
			t.Fatalf("unexpected kind %q", meta.Kind)
		}
		if err := k8syaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			config = o.Data["wharf.yml"]
		case *appsv1.StatefulSet:
			pods = append(pods, o.Spec.Template.Spec)
			if driver == "s3" && (len(o.Spec.Template.Spec.TopologySpreadConstraints) == 0 || o.Spec.Template.Spec.Affinity == nil) {
				t.Errorf("a fleet's StatefulSet without anti-affinity and a topology spread: one node could take every replica")
			}
		case *corev1.Service:
			if o.Spec.ClusterIP == "None" && o.Spec.PublishNotReadyAddresses {
				t.Errorf("headless Service %s publishes replicas that are not ready: they would own blobs, tags and rules", o.Name)
			}
		case *batchv1.CronJob:
			pods = append(pods, o.Spec.JobTemplate.Spec.Template.Spec)
		}
		kinds[meta.Kind]++
	}

	// The configuration loads, each secret file it names standing in with
	// a 20-character secret, and its ${VAR}s set.
	secretPath := regexp.MustCompile(`/run/secrets/[a-z0-9-]+/[a-z0-9._-]+`)
	body := secretPath.ReplaceAllStringFunc(config, func(p string) string {
		f := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(f, []byte("0123456789abcdef0123"), 0o400); err != nil {
			t.Fatal(err)
		}
		return f
	})
	vars := regexp.MustCompile(`\$\{([A-Z0-9_]+)\}`).FindAllStringSubmatch(config, -1)
	for _, v := range vars {
		t.Setenv(v[1], "10.0.0.7")
	}
	cfg, err := loadConfig(writeConfig(t, body))
	if err != nil {
		t.Fatalf("wharf.yml does not load: %v\n%s", err, config)
	}
	if cfg.Storage.Driver != driver || (cfg.Cluster != nil && (!strings.HasSuffix(cfg.Cluster.Advertise, "://10.0.0.7:5001") || cfg.Cluster.Listen != ":5001")) {
		t.Errorf("wharf.yml: driver %q (want %q), cluster %+v", cfg.Storage.Driver, driver, cfg.Cluster)
	}

	if len(pods) == 0 {
		t.Fatal("no pod template")
	}
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
			if len(c.Args) < 3 || (c.Args[0] != "serve" && c.Args[0] != "gc") || c.Args[2] != "/etc/wharf/wharf.yml" {
				t.Fatalf("container %s: args %v are no wharf command on the ConfigMap's file", c.Name, c.Args)
			}
			if c.Args[0] == "gc" {
				// A fleet may redirect clients to the bucket: gc keeps
				// what was used within a safe age.
				i := slices.Index(c.Args, "--min-age")
				if i < 0 || i+1 == len(c.Args) {
					t.Errorf("container %s: gc without --min-age: %v", c.Name, c.Args)
				} else if d, err := time.ParseDuration(c.Args[i+1]); err != nil || d < safeMinAge {
					t.Errorf("container %s: gc --min-age %s, want %v or more", c.Name, c.Args[i+1], safeMinAge)
				}
			}
			if c.Args[0] == "serve" && (c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" ||
				c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/livez") {
				t.Errorf("container %s: readiness on /healthz and liveness on /livez", c.Name)
			}
			mounts := map[string]bool{}
			for _, m := range c.VolumeMounts {
				mounts[m.MountPath] = true
			}
			for _, p := range append(secretPath.FindAllString(config, -1), "/etc/wharf/wharf.yml") {
				if !mounts[filepath.Dir(p)] {
					t.Errorf("container %s: nothing is mounted at %s, which wharf.yml names", c.Name, filepath.Dir(p))
				}
			}
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			for _, v := range vars {
				if !env[v[1]] {
					t.Errorf("container %s: wharf.yml reads ${%s}, which is not in the environment", c.Name, v[1])
				}
			}
		}
	}
	return kinds
}
