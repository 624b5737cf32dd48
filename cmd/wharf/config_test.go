package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wharf.yml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := loadConfig("../../config.example.yml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":5000" || cfg.Storage.Root != "./data" || len(cfg.Upstreams) != 4 {
		t.Fatalf("unexpected example config: %+v", cfg)
	}
	if u := cfg.Upstreams[0]; u.Name != "docker.io" || !u.Default || *u.TagTTL != time.Minute {
		t.Fatalf("docker.io upstream: %+v", u)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Setenv("WHARF_TEST_PASS", "from-env")
	secret := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(secret, []byte("from-file\n"), 0o600)
	base := "storage: {root: /tmp/x}\nupstreams:\n  - name: a.io\n    url: https://a.io\n"
	private := base + "    username: robot\n    password: pw\n"
	s3base := "storage: {root: /tmp/x, driver: s3, s3: {bucket: b, region: us-east-1}}\nupstreams:\n  - name: a.io\n    url: https://a.io\n"
	peerSecret := filepath.Join(t.TempDir(), "peer")
	os.WriteFile(peerSecret, []byte("0123456789abcdef-peer\n"), 0o600)
	cases := []struct{ body, want string }{
		{"", "the file is empty"},
		{"listen: :1\nlisten_addr: x\n", `line 2: unknown key "listen_addr"`},
		{base + "    tag_tll: 1m\n", `line 5: unknown key "tag_tll": did you mean "tag_ttl"?`},
		{base + "    tag_ttl: 30\n", `line 5: "30" is not a duration: write it with its unit, like 30s, 5m or 1h`},
		{"storage: {root: /x}\n", "at least one upstream"},
		{"upstreams: [{name: a, url: https://a}]\n", "storage.root must be set"},
		{base + "    tag_ttl: -1s\n", "tag_ttl must not be negative"},
		{base + "    negative_ttl: -1s\n", "negative_ttl must not be negative"},
		{base + "    revalidate_timeout: -1s\n", "revalidate_timeout must not be negative"},
		{base + "    max_concurrent: -1\n", "max_concurrent must not be negative"},
		{base + "    password: ${WHARF_TEST_UNSET_VAR}\n", "WHARF_TEST_UNSET_VAR is not set"},
		{base + "    password: x\n    password_file: " + secret + "\n", "not both"},
		{base + "log_level: loud\n", "log_level"},
		{base + "log_format: xml\n", `log_format "xml": want logfmt or json`},
		{base + "audit: {file: /tmp/a, max_size_mb: -1}\n", "audit.max_size_mb and audit.max_backups must not be negative"},
		{base + "server: {trusted_proxies: [10.0.0.0/40]}\n", "server.trusted_proxies: \"10.0.0.0/40\""},
		{"storage: {root: /x, max_size: lots}\nupstreams: [{name: a, url: https://a}]\n", "storage.max_size"},
		{"storage: {root: /x, high_watermark: 0.5, low_watermark: 0.7}\nupstreams: [{name: a, url: https://a}]\n", "watermarks"},
		{"storage: {root: /x}\nupstreams: [{name: a/b, url: https://a}]\n", "without /"},
		{base + "targets: [{name: b}]\n", "targets[0]: name and url are required"},
		{base + "targets: [{name: b, url: https://b}, {name: b, url: https://c}]\n", "target b is configured twice"},
		{base + "targets: [{name: b, url: https://b, aliases: [c]}]\n", `unknown key "aliases"`},
		{base + "targets: [{name: b, url: https://b, chunk_size: 10KiB}]\n", "chunk_size"},
		{base + "targets: [{name: b, url: https://b, password: '${WHARF_TEST_UNSET_VAR}'}]\n", "target b: environment variable WHARF_TEST_UNSET_VAR"},
		{base + "api: {token_file: /nonexistent/token}\n", "api.token_file"},
		{base + "api: {token_file: " + secret + "}\n", "at least 16 characters"},
		{base + "prefetch: {concurrency: -2}\n", "prefetch.concurrency"},
		{base + "prefetch: {transfers: -1}\n", "prefetch.transfers must not be negative"},
		{base + "debug_listen: ':6060'\n", "debug_listen"},
		{base + "debug_listen: 0.0.0.0:6060\n", "pprof must stay on loopback"},
		{private + "auth: {anonymous: ['*/*']}\n", "auth.anonymous \"*/*\" would serve upstream a.io, which Wharf logs in to, to anyone. Either set public: true on upstream a.io"},
		{private + "auth: {anonymous: ['a.io/library/*']}\n", "narrow auth.anonymous"},
		{private + "    public: false\nauth: {anonymous: ['a.io/*']}\n", "would serve upstream a.io"},
		{base + "    cert_file: /c.pem\n    key_file: /k.pem\nauth: {anonymous: ['a.io/*']}\n", "would serve upstream a.io, which Wharf logs in to"},
		{base + "auth: {anonymous: ['[']}\n", "auth.anonymous"},
		{base + "auth: {rules: [{users: [ci], pull: ['a.io/*']}]}\n", "auth.htpasswd is not set"},
		{base + "targets: [{name: b, url: https://b}]\nauth: {htpasswd: /h, rules: [{users: [ci], push: ['c/proj/*']}]}\n", `auth.rules[0].push "c/proj/*" names no configured target`},
		{base + "tls: {cert_file: /x}\n", "cert_file and key_file together"},
		{base + "replication: [{name: r, sources: [a.io/x], tags: '((', on_pull: true}]\n", "replication rule r: tag expression"},
		{base + "replication: [{name: r, sources: [a.io/x], semver: 'one', on_pull: true}]\n", "replication rule r: semver range"},
		{base + "replication: [{name: r, sources: [a.io/x], tags: x, semver: '>1', on_pull: true}]\n", "not both"},
		{base + "replication: [{name: r, sources: [a.io/x], platforms: [linux], on_pull: true}]\n", "platform \"linux\""},
		{base + "replication: [{name: r, sources: [a.io/x], index: sorted, on_pull: true}]\n", "index \"sorted\""},
		{base + "replication: [{name: r, sources: [a.io/x]}]\n", "no trigger"},
		{base + "tls: {client_ca_file: /x}\n", "needs tls.cert_file"},
		{"storage: {root: /x, driver: gcs}\nupstreams: [{name: a, url: https://a}]\n", `storage.driver "gcs"`},
		{"storage: {root: /x, redirect: true}\nupstreams: [{name: a, url: https://a}]\n", "storage.redirect needs storage.driver: s3"},
		{base + "cluster: {peers: [http://a:5000], advertise: http://a:5000, secret_file: " + secret + "}\n", "cluster needs storage.driver: s3"},
		{s3base + "cluster: {peers: [http://a:5000, http://b:5000], advertise: http://c:5000, secret_file: " + peerSecret + "}\n", "is not among cluster.peers"},
		{s3base + "cluster: {peers: [http://a:5000], dns: 'w:5000', advertise: http://a:5000, secret_file: " + peerSecret + "}\n", "peers or dns, not both"},
		{s3base + "cluster: {advertise: http://a:5000, secret_file: " + peerSecret + "}\n", "set peers"},
		{s3base + "cluster: {dns: w, advertise: http://a:5000, secret_file: " + peerSecret + "}\n", "cluster.dns"},
		{s3base + "cluster: {dns: 'w:5000', advertise: 'http://${WHARF_TEST_UNSET_VAR}:5000', secret_file: " + peerSecret + "}\n", "cluster.advertise: environment variable WHARF_TEST_UNSET_VAR"},
		{s3base + "cluster: {dns: 'w:5000', advertise: a:5000, secret_file: " + peerSecret + "}\n", "want this replica's base URL"},
		{s3base + "cluster: {dns: 'w:5000', advertise: http://a:5000}\n", "cluster.secret_file must be set"},
		{s3base + "cluster: {dns: 'w:5001', advertise: https://a:5001, secret_file: " + peerSecret + ", tls: {cert_file: c, key_file: k, client_ca_file: ca}}\n", "cluster.tls needs cluster.listen"},
		{s3base + "cluster: {dns: 'w:5001', advertise: https://a:5001, listen: ':5001', secret_file: " + peerSecret + ", tls: {cert_file: c, key_file: k}}\n", "needs cert_file, key_file and client_ca_file"},
		{s3base + "cluster: {dns: 'w:5001', advertise: http://a:5001, listen: ':5001', secret_file: " + peerSecret + ", tls: {cert_file: c, key_file: k, client_ca_file: ca}}\n", "peers are reached by https://"},
		{s3base + "cluster: {peers: [https://a:5001, http://b:5001], advertise: https://a:5001, listen: ':5001', secret_file: " + peerSecret + ", tls: {cert_file: c, key_file: k, client_ca_file: ca}}\n", "cluster.peers: http://b:5001"},
		{s3base + "cluster: {dns: 'w:5001', advertise: https://a:5001, listen: '5001', secret_file: " + peerSecret + ", tls: {cert_file: c, key_file: k, client_ca_file: ca}}\n", "cluster.listen \"5001\""},
		{s3base + "cluster: {dns: 'w:5000', advertise: http://a:5000, secret_file: " + secret + "}\n", "at least 16 characters"},
		{"storage: {root: /x, driver: s3}\nupstreams: [{name: a, url: https://a}]\n", "storage.s3.bucket must be set"},
		{"storage: {root: /x, s3: {bucket: b}}\nupstreams: [{name: a, url: https://a}]\n", "storage.driver is not s3"},
		{"storage: {root: /x, driver: s3, s3: {bucket: b, secretkey: '${WHARF_TEST_UNSET_VAR}'}}\nupstreams: [{name: a, url: https://a}]\n",
			"storage.s3.secretkey: environment variable WHARF_TEST_UNSET_VAR is not set"},
		{base + "tls: {cert_file: /nonexistent/crt, key_file: /nonexistent/key}\n", "tls: "},
	}
	for _, c := range cases {
		_, err := loadConfig(writeConfig(t, c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config %q: error %v, want %q", c.body, err, c.want)
		}
	}
	t.Setenv("WHARF_TEST_POD_IP", "10.1.2.3")
	cfg, err := loadConfig(writeConfig(t, s3base+"cluster: {dns: 'wharf-headless:5000', advertise: 'http://${WHARF_TEST_POD_IP}:5000/', secret_file: "+peerSecret+"}\n"))
	if err != nil || cfg.Cluster.Advertise != "http://10.1.2.3:5000" || cfg.Cluster.Secret != "0123456789abcdef-peer" {
		t.Fatalf("cluster: %v %+v", err, cfg)
	}
	// On an IPv6 cluster the pod's address comes bare; it is bracketed.
	t.Setenv("WHARF_TEST_POD_IP", "fd00::1:2")
	cfg, err = loadConfig(writeConfig(t, s3base+"cluster: {dns: 'wharf-headless:5000', advertise: 'http://${WHARF_TEST_POD_IP}:5000', secret_file: "+peerSecret+"}\n"))
	if err != nil || cfg.Cluster.Advertise != "http://[fd00::1:2]:5000" {
		t.Fatalf("cluster on IPv6: %v %+v", err, cfg)
	}
	// A fill waits for a silent owner 10 s longer than the owner waits
	// for its slowest upstream.
	if got := cfg.stallTimeout(); got != 40*time.Second {
		t.Fatalf("stall bound with the default idle_timeout: %v, want 40s", got)
	}
	cfg, err = loadConfig(writeConfig(t, base+"    idle_timeout: 5m\n"))
	if err != nil || cfg.stallTimeout() != 5*time.Minute+10*time.Second {
		t.Fatalf("stall bound with idle_timeout 5m: %v %v", err, cfg.stallTimeout())
	}
	cfg, err = loadConfig(writeConfig(t, base+"    username: bot\n    password: ${WHARF_TEST_PASS}\n"))
	if err != nil || cfg.Upstreams[0].Password != "from-env" {
		t.Fatalf("env expansion: %v %+v", err, cfg)
	}
	cfg, err = loadConfig(writeConfig(t, strings.Replace(base, "root: /tmp/x", "root: /tmp/x, max_size: 2GiB", 1)))
	if err != nil || cfg.Storage.MaxBytes() != 2<<30 {
		t.Fatalf("max_size 2GiB: %v %+v", err, cfg)
	}
	cfg, err = loadConfig(writeConfig(t, "storage: {root: /x, driver: s3, s3: {bucket: b, region: us-east-1, accesskey: k, secretkey: '${WHARF_TEST_PASS}', forcepathstyle: true}}\nupstreams: [{name: a, url: https://a}]\n"))
	if err != nil || cfg.Storage.S3["secretkey"] != "from-env" || cfg.Storage.S3["forcepathstyle"] != true {
		t.Fatalf("storage.s3: %v %+v", err, cfg)
	}
	cfg, err = loadConfig(writeConfig(t, base+"    password_file: "+secret+"\n"))
	if err != nil || cfg.Upstreams[0].Password != "from-file" {
		t.Fatalf("password_file: %v %+v", err, cfg)
	}
	// Harbor robot accounts hold a $ that is not a variable.
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("0123456789abcdef0123\n"), 0o600)
	cfg, err = loadConfig(writeConfig(t, base+"targets:\n  - {name: harbor-b, url: https://b, username: robot$push, password_file: "+secret+", chunk_size: 8MiB}\napi: {token_file: "+token+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tc := cfg.Targets[0]; tc.Username != "robot$push" || tc.Password != "from-file" || tc.chunkBytes != 8<<20 || cfg.API.token != "0123456789abcdef0123" {
		t.Fatalf("target: %+v, token %q", tc, cfg.API.token)
	}
}

func TestCommandLine(t *testing.T) {
	var out, errOut strings.Builder
	if err := run([]string{"version"}, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "wharf ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
	if err := run([]string{"serve"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("serve without config: %v", err)
	}
	if err := run([]string{"frobnicate"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("unknown command: %v", err)
	}
	local := writeConfig(t, "storage: {root: /tmp/x}\nupstreams: [{name: a, url: https://a}]\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"gc", "--config", local}, "usage: wharf gc"},
		{[]string{"gc", "--config", local, "--keep", "lots"}, `--keep "lots"`},
		{[]string{"gc", "--config", local, "--keep", "1GiB", "--min-age", "-1h"}, "--min-age and --pins-age are durations of 0 or more"},
		{[]string{"gc", "--config", local, "--keep", "1GiB"}, "needs storage.driver: s3"},
	} {
		if err := run(c.args, &out, &errOut); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

// A private upstream is served to the network only when the config says
// so, and what is allowed loads.
func TestPrivateUpstreamConfigs(t *testing.T) {
	base := "storage: {root: /tmp/x}\nupstreams:\n  - {name: docker.io, url: https://registry-1.docker.io}\n  - {name: a.io, url: https://a.io, username: robot, password: pw"
	for body, anon := range map[string][]string{
		base + "}\n":               {"docker.io/*"}, // no auth block: the private one stays on loopback
		base + ", public: true}\n": {"docker.io/*", "a.io/*"},
		base + ", public: true}\nauth: {anonymous: ['*/*']}\n": {"*/*"},
		base + "}\nauth: {anonymous: [docker.io/*]}\n":         {"docker.io/*"},
		// A client certificate is a credential like a password.
		"storage: {root: /tmp/x}\nupstreams:\n  - {name: docker.io, url: https://registry-1.docker.io}\n  - {name: m.io, url: https://m.io, cert_file: /c.pem, key_file: /k.pem}\n": {"docker.io/*"},
	} {
		cfg, err := loadConfig(writeConfig(t, body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		ac := cfg.accessConfig(nil, nil)
		if strings.Join(ac.Anonymous, ",") != strings.Join(anon, ",") || ac.Loopback != (cfg.Auth == nil) {
			t.Fatalf("%s: anonymous %q loopback %v", body, ac.Anonymous, ac.Loopback)
		}
	}
}

// Start-up says who may read each private upstream and warns of secret
// files that group or others can read.
func TestStartupAccessLog(t *testing.T) {
	dir := t.TempDir()
	loose, tight := filepath.Join(dir, "loose"), filepath.Join(dir, "tight")
	os.WriteFile(loose, []byte("pw\n"), 0o644)
	os.WriteFile(tight, []byte("ci:$2y$05$x\n"), 0o600)
	cfg, err := loadConfig(writeConfig(t, "storage: {root: /tmp/x}\nupstreams:\n  - {name: a.io, url: https://a.io, username: robot, password_file: "+loose+"}\n"+
		"auth:\n  htpasswd: "+tight+"\n  rules:\n    - {users: [ci, alice], pull: [a.io/proj/*]}\n    - {users: [bob], pull: [docker.io/*]}\n    - {users: [root], api: [admin]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cfg.logAccess(slog.New(slog.NewTextHandler(&out, nil)))
	log := out.String()
	for _, want := range []string{`msg="private upstream" upstream=a.io readers=alice,ci,root`, `setting="upstream a.io password_file"`, "mode=-rw-r--r--"} {
		if !strings.Contains(log, want) {
			t.Errorf("start-up log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "auth.htpasswd") {
		t.Errorf("a 0600 file was warned about:\n%s", log)
	}
}

// The CLI's options reach the body: --from-cache, --referrers=false and
// --index filter.
func TestPrefetchRequestOptions(t *testing.T) {
	body, ct, q, err := prefetchRequest("", nil, []string{"harbor-a.example.com/proj/*"}, "harbor-b", []string{"linux/amd64"}, nil, false)
	if err != nil || ct != "application/json" {
		t.Fatal(err, ct)
	}
	body, q, err = withOptions(body, ct, q, false, "filter")
	var req struct {
		FromCache []string `json:"from_cache"`
		Referrers *bool
		Index     string
	}
	if err != nil || json.Unmarshal(body, &req) != nil || len(req.FromCache) != 1 || req.Referrers == nil || *req.Referrers || req.Index != "filter" || q.Encode() != "" {
		t.Fatalf("%s %v %v", body, q, err)
	}
}

// -h and --help show a command's flags and are no error: main exits 0.
func TestHelpIsNoError(t *testing.T) {
	for _, c := range []string{"serve", "config", "check", "gc", "prefetch", "jobs", "pins", "targets", "replicate"} {
		for _, h := range []string{"-h", "--help"} {
			var out, errs bytes.Buffer
			err := run([]string{c, h}, &out, &errs)
			help := out.String()
			if exitCode(err) != 0 || !strings.HasPrefix(help, "usage: wharf "+c+" ") || !strings.Contains(help, "\nexamples:\n  wharf "+c) ||
				!strings.Contains(help, "exit status: 0 done, 1 failed, 2 the command line is wrong") {
				t.Errorf("wharf %s %s: exit %d\n%s", c, h, exitCode(err), help)
			}
			// One spelling: --name, as the top-level usage and the docs write it.
			if m := regexp.MustCompile(`(?m)^  -[a-z][a-z-]+`).FindString(help); m != "" {
				t.Errorf("wharf %s %s spells a flag %q", c, h, m)
			}
		}
	}
	// A command line that does not parse exits 2, with the reason.
	for _, args := range [][]string{{"prefetch", "--no-such-flag"}, {"jobs", "--cancel"}, {"nonsense"}, {}, {"config", "--config", "x.yml"}} {
		var out, errs bytes.Buffer
		if err := run(args, &out, &errs); exitCode(err) != 2 {
			t.Errorf("wharf %v: exit %d (%v), want 2", args, exitCode(err), err)
		}
	}
}

// wharf config check validates a file as serve would, saying where a
// problem is; wharf config print shows every default and hides secrets.
func TestConfigCheckAndPrint(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yml")
	os.WriteFile(good, []byte("storage: {root: /tmp/x}\nupstreams:\n  - name: a.io\n    url: https://a.io\n    username: robot\n    password: s3cret\n"), 0o600)
	var out, errs bytes.Buffer
	if err := run([]string{"config", "check", "--config", good}, &out, &errs); err != nil || out.String() != good+": ok (1 upstreams, 0 targets, 0 replication rules)\n" {
		t.Fatalf("check: %v %q", err, out.String())
	}
	out.Reset()
	if err := run([]string{"config", "print", "--config", good}, &out, &errs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"listen: :5000", "log_format: logfmt", "read_header_timeout: 10s", "password: (hidden)", "min_free: 5%"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("config print lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "s3cret") {
		t.Fatalf("config print shows the password:\n%s", out.String())
	}
	for body, want := range map[string]string{
		"storage: {root: /tmp/x}\nupstreams:\n  - name: a.io\n    url: https://a.io\n    tag_ttl: -1s\n":                            "bad.yml line 5: upstream a.io: tag_ttl must not be negative",
		"storage:\n  root: /tmp/x\n  max_size: lots\nupstreams: [{name: a, url: https://a}]\n":                                      `bad.yml line 3: storage.max_size "lots": want a size like 50GiB`,
		"log_format: xml\nstorage: {root: /tmp/x}\nupstreams: [{name: a, url: https://a}]\n":                                        `bad.yml line 1: log_format "xml": want logfmt or json`,
		"storage: {root: /tmp/x}\nupstreams: [{name: a, url: https://a}]\ntargets:\n  - {name: b, url: https://b, chunk_size: 1}\n": `bad.yml line 4: target b: chunk_size "1": want a size of at least 1MiB, like 64MiB`,
	} {
		bad := filepath.Join(dir, "bad.yml")
		os.WriteFile(bad, []byte(body), 0o600)
		err := run([]string{"config", "check", "--config", bad}, &out, &errs)
		if exitCode(err) != 1 || err == nil || !strings.HasSuffix(err.Error(), want) && !strings.Contains(err.Error(), want[len("bad.yml"):]) {
			t.Errorf("config check of\n%s: %v, want %q", body, err, want)
		}
	}
}
