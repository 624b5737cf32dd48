package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream"
)

// fileConfig is the YAML file, key for key. External tools generate these
// names, so they change only with a migration.
type fileConfig struct {
	Listen      string         `yaml:"listen"`
	DebugListen string         `yaml:"debug_listen"`
	LogLevel    string         `yaml:"log_level"`
	LogFormat   string         `yaml:"log_format"`
	Audit       audit.Config   `yaml:"audit"`
	Storage     storage.Config `yaml:"storage"`
	Pins        []string       `yaml:"pins"`
	Server      struct {
		ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
		IdleTimeout       time.Duration `yaml:"idle_timeout"`
		ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`
		WriteTimeout      time.Duration `yaml:"write_timeout"`
		MaxConnections    int           `yaml:"max_connections"`
		// MaxConnectionsPerAddress bounds one remote address's share of
		// max_connections (0: none).
		MaxConnectionsPerAddress int `yaml:"max_connections_per_address"`
		// TrustedProxies are the load balancers whose X-Forwarded-For
		// names the client, for the login limiter and the logs.
		TrustedProxies []string `yaml:"trusted_proxies"`
		proxies        []netip.Prefix
	} `yaml:"server"`
	Upstreams []upstreamConfig `yaml:"upstreams"`
	Targets   []targetConfig   `yaml:"targets"`
	API       struct {
		TokenFile string `yaml:"token_file"`
		token     string
	} `yaml:"api"`
	// Prefetch is the prefetch: block, which configures replicate's jobs.
	Prefetch    replicate.Config       `yaml:"prefetch"`
	Auth        *auth.Config           `yaml:"auth"`
	TLS         tlsConfig              `yaml:"tls"`
	Replication []replicate.RuleConfig `yaml:"replication"`
	Cluster     *clusterConfig         `yaml:"cluster"`
}

// clusterConfig is the cluster: block: the fleet, and where its peers
// talk to each other.
type clusterConfig struct {
	cluster.Config `yaml:",inline"`
	// Listen serves peer requests on an address of their own, and only
	// there: a NetworkPolicy can then keep the peer port to the fleet's
	// pods. "": peers use the client listener.
	Listen string `yaml:"listen"`
	// TLS on Listen, mutual: every replica presents a certificate that
	// client_ca_file signed, and accepts only such peers.
	TLS tlsConfig `yaml:"tls"`
}

// registryConfig is what upstreams and targets share: a registry, and how to
// reach and log in to it.
type registryConfig struct {
	Name          string        `yaml:"name"`
	URL           string        `yaml:"url"`
	Username      string        `yaml:"username"`
	Password      string        `yaml:"password"`
	PasswordFile  string        `yaml:"password_file"`
	Insecure      bool          `yaml:"insecure"`
	DialTimeout   time.Duration `yaml:"dial_timeout"`
	HeaderTimeout time.Duration `yaml:"header_timeout"`
	IdleTimeout   time.Duration `yaml:"idle_timeout"`
	MaxConcurrent int           `yaml:"max_concurrent"`
	WaitTimeout   time.Duration `yaml:"wait_timeout"`
	CAFile        string        `yaml:"ca_file"`
	CertFile      string        `yaml:"cert_file"`
	KeyFile       string        `yaml:"key_file"`
	TokenRealms   []string      `yaml:"token_realms"`
}

// credentialed: Wharf logs in to it, with a password, a token or a client
// certificate, so what it serves may be private.
func (r *registryConfig) credentialed() bool {
	return r.Username != "" || r.Password != "" || r.CertFile != "" || r.KeyFile != ""
}

// client is the upstream.Client for r, a push target's if push is set.
func (r *registryConfig) client(m *upstream.Metrics, push bool, chunkSize int64, log *slog.Logger) (*upstream.Client, error) {
	return upstream.New(upstream.Config{
		Name: r.Name, URL: r.URL, Username: r.Username, Password: r.Password, Insecure: r.Insecure,
		DialTimeout: r.DialTimeout, ResponseHeaderTimeout: r.HeaderTimeout, IdleTimeout: r.IdleTimeout,
		MaxConcurrent: r.MaxConcurrent, WaitTimeout: r.WaitTimeout, ChunkSize: chunkSize, Push: push,
		UserAgent: "wharf/" + versionString(), CAFile: r.CAFile, CertFile: r.CertFile, KeyFile: r.KeyFile, TokenRealms: r.TokenRealms, Logger: log,
	}, m)
}

// validate checks what every registry needs; kind names it in errors.
func (r *registryConfig) validate(kind string, i int) error {
	if r.Name == "" || r.URL == "" {
		return fmt.Errorf("%ss[%d]: name and url are required", kind, i)
	}
	if err := nonNegative(map[string]int64{"max_concurrent": int64(r.MaxConcurrent), "wait_timeout": int64(r.WaitTimeout)}); err != nil {
		return fmt.Errorf("%s %s: %w", kind, r.Name, err)
	}
	if err := r.resolveSecrets(); err != nil {
		return fmt.Errorf("%s %s: %w", kind, r.Name, err)
	}
	return nil
}

// targetConfig is a registry prefetch jobs may push to.
type targetConfig struct {
	registryConfig `yaml:",inline"`
	ChunkSize      string `yaml:"chunk_size"`
	chunkBytes     int64
	// RetryFor is how long pushes ride out this target being unavailable
	// before an image fails (default 10m).
	RetryFor *time.Duration `yaml:"retry_for"`
}

type upstreamConfig struct {
	registryConfig `yaml:",inline"`
	Aliases        []string       `yaml:"aliases"`
	Default        bool           `yaml:"default"`
	TagTTL         *time.Duration `yaml:"tag_ttl"`
	NegativeTTL    *time.Duration `yaml:"negative_ttl"`
	Revalidate     time.Duration  `yaml:"revalidate_timeout"`
	MaxFills       int            `yaml:"max_fills"`
	FillGrace      time.Duration  `yaml:"fill_grace"`
	// EagerFill starts an image's blob fills with its manifest (default true).
	EagerFill *bool `yaml:"eager_fill"`
	// Public says that what this upstream serves may be served to anyone,
	// although Wharf logs in to it. Without it, a credentialed upstream is
	// served to loopback clients only (no auth block) or refused at start
	// when auth.anonymous reaches it.
	Public *bool `yaml:"public"`
}

// private: Wharf logs in to it and nobody said its content is public.
func (u *upstreamConfig) private() bool { return u.credentialed() && (u.Public == nil || !*u.Public) }

// maxFills is the cap on an upstream's fills: as configured, or three
// quarters of its request slots, so manifests always find one free.
func (u *upstreamConfig) maxFills() int {
	if u.MaxFills > 0 {
		return u.MaxFills
	}
	return max(1, cmp.Or(u.MaxConcurrent, 32)*3/4)
}

// Defaults for tag_ttl and negative_ttl.
const (
	defaultTagTTL      = time.Minute
	defaultNegativeTTL = 15 * time.Second
)

var (
	unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type`)
	notDuration  = regexp.MustCompile("line (\\d+): cannot unmarshal !!\\w+ `([^`]*)` into time.Duration")
)

// nearestKey is the configuration key closest to an unknown one, within
// two edits, "" if none is: a typo's likely meaning.
func nearestKey(unknown string) string {
	best, bestD := "", 3
	for _, k := range configKeyNames(reflect.TypeFor[fileConfig](), map[reflect.Type]bool{}) {
		if d := editDistance(unknown, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// configKeyNames lists the YAML keys t and the types under it take.
func configKeyNames(t reflect.Type, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return nil
	}
	seen[t] = true
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name != "" {
			out = append(out, name)
		}
		out = append(out, configKeyNames(f.Type, seen)...)
	}
	return out
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// loadConfig reads, decodes (rejecting unknown keys) and validates path,
// resolving secrets from files and the environment.
func loadConfig(path string) (*fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := &fileConfig{Listen: ":5000", LogLevel: "info", LogFormat: "logfmt"}
	cfg.Storage.MinFree = "5%"
	cfg.Server.ReadHeaderTimeout = 10 * time.Second
	cfg.Server.IdleTimeout = 2 * time.Minute
	cfg.Server.ShutdownTimeout = 30 * time.Second
	cfg.Server.WriteTimeout = 30 * time.Second
	cfg.Server.MaxConnections = 2048
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty", path)
		}
		if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
			if near := nearestKey(m[2]); near != "" {
				return nil, fmt.Errorf("%s line %s: unknown key %q: did you mean %q?", path, m[1], m[2], near)
			}
			return nil, fmt.Errorf("%s line %s: unknown key %q", path, m[1], m[2])
		}
		if m := notDuration.FindStringSubmatch(err.Error()); m != nil {
			return nil, fmt.Errorf("%s line %s: %q is not a duration: write it with its unit, like 30s, 5m or 1h", path, m[1], m[2])
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.validate(); err != nil {
		if line := keyLine(raw, err.Error()); line > 0 {
			return nil, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func (c *fileConfig) validate() error {
	if c.Listen == "" {
		return errors.New("listen must be set")
	}
	if err := c.Storage.Check(expandEnv); err != nil {
		return err
	}
	if err := nonNegative(map[string]int64{"server.write_timeout": int64(c.Server.WriteTimeout), "server.max_connections": int64(c.Server.MaxConnections),
		"server.max_connections_per_address": int64(c.Server.MaxConnectionsPerAddress)}); err != nil {
		return err
	}
	var err error
	if c.Server.proxies, err = httpx.ParseProxies(c.Server.TrustedProxies); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "logfmt", "json":
	default:
		return fmt.Errorf("log_format %q: want logfmt or json", c.LogFormat)
	}
	if c.Audit.MaxSizeMB < 0 || c.Audit.MaxBackups < 0 {
		return errors.New("audit.max_size_mb and audit.max_backups must not be negative")
	}
	if len(c.Upstreams) == 0 {
		return errors.New("at least one upstream is needed")
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if err := u.validate("upstream", i); err != nil {
			return err
		}
		if strings.ContainsAny(u.Name, "/ ") {
			return fmt.Errorf("upstream %s: name must be a registry host like ghcr.io, without / or spaces", u.Name)
		}
		for _, d := range []struct {
			name string
			v    **time.Duration
			def  time.Duration
		}{{"tag_ttl", &u.TagTTL, defaultTagTTL}, {"negative_ttl", &u.NegativeTTL, defaultNegativeTTL}} {
			if *d.v == nil {
				*d.v = &d.def
			} else if **d.v < 0 {
				return fmt.Errorf("upstream %s: %s must not be negative", u.Name, d.name)
			}
		}
		if err := nonNegative(map[string]int64{"revalidate_timeout": int64(u.Revalidate), "fill_grace": int64(u.FillGrace), "max_fills": int64(u.MaxFills)}); err != nil {
			return fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		if u.MaxFills > 0 && u.MaxFills >= cmp.Or(u.MaxConcurrent, 32) {
			return fmt.Errorf("upstream %s: max_fills (%d) must stay under max_concurrent (%d), or manifest requests could find no slot", u.Name, u.MaxFills, cmp.Or(u.MaxConcurrent, 32))
		}
	}
	if err := c.validatePrefetch(); err != nil {
		return err
	}
	if err := c.validateAccess(); err != nil {
		return err
	}
	if _, err := c.rules(); err != nil {
		return err
	}
	return c.validateTLS()
}

// validatePrefetch checks the push targets, the API token and the
// prefetch settings.
func (c *fileConfig) validatePrefetch() error {
	names := map[string]bool{}
	for i := range c.Targets {
		t := &c.Targets[i]
		if err := t.validate("target", i); err != nil {
			return err
		}
		if names[t.Name] {
			return fmt.Errorf("target %s is configured twice", t.Name)
		}
		names[t.Name] = true
		if t.ChunkSize != "" {
			n, err := humanize.ParseBytes(t.ChunkSize)
			if err != nil || n < 1<<20 {
				return fmt.Errorf("target %s: chunk_size %q: want a size of at least 1MiB, like 64MiB", t.Name, t.ChunkSize)
			}
			t.chunkBytes = int64(n)
		}
		if t.RetryFor != nil && *t.RetryFor < 0 {
			return fmt.Errorf("target %s: retry_for must not be negative", t.Name)
		}
	}
	if err := c.Prefetch.Check(); err != nil {
		return err
	}
	if c.Cluster != nil {
		if c.Storage.Driver != "s3" {
			return errors.New("cluster needs storage.driver: s3: the replicas share the bucket")
		}
		advertise, err := expandEnv(c.Cluster.Advertise)
		if err != nil {
			return fmt.Errorf("cluster.advertise: %w", err)
		}
		c.Cluster.Advertise = advertise // a pod's IP, from the downward API
		if err := c.Cluster.Check(); err != nil {
			return err
		}
		if err := c.Cluster.checkListen(); err != nil {
			return err
		}
	}
	if f := c.API.TokenFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("api.token_file: %w", err)
		}
		if c.API.token = strings.TrimSpace(string(b)); len(c.API.token) < 16 {
			return fmt.Errorf("api.token_file %s: the token must be at least 16 characters", f)
		}
	}
	return nil
}

// nonNegative names the first (in key order) of the settings that is
// negative.
func nonNegative(settings map[string]int64) error {
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		if settings[k] < 0 {
			return fmt.Errorf("%s must not be negative", k)
		}
	}
	return nil
}

// envRef is a ${VAR} reference. A bare $ is kept as it is: Harbor robot
// accounts are named robot$name.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces each ${VAR} in s with the variable's value. A
// variable that is not set is an error, not an empty value that fails
// later in a confusing way.
func expandEnv(s string) (string, error) {
	var missing []string
	s = envRef.ReplaceAllStringFunc(s, func(ref string) string {
		k := ref[2 : len(ref)-1]
		v, ok := os.LookupEnv(k)
		if !ok {
			missing = append(missing, k)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("environment variable %s is not set", strings.Join(missing, ", "))
	}
	return s, nil
}

// resolveSecrets expands ${VAR} in username and password and reads
// password_file.
func (u *registryConfig) resolveSecrets() error {
	var err error
	if u.Username, err = expandEnv(u.Username); err != nil {
		return err
	}
	if u.Password, err = expandEnv(u.Password); err != nil {
		return err
	}
	if u.PasswordFile != "" {
		if u.Password != "" {
			return errors.New("set password or password_file, not both")
		}
		b, err := os.ReadFile(u.PasswordFile)
		if err != nil {
			return fmt.Errorf("password_file: %w", err)
		}
		u.Password = strings.TrimRight(string(b), "\r\n")
	}
	return nil
}

// stallTimeout is how long a fill waits for a silent bucket or owner: as
// long as the owner waits for the longest-waited-for silent upstream, and
// 10 s more, so that the owner gives up first, resumes, and its stream
// goes on.
func (c *fileConfig) stallTimeout() time.Duration {
	stall := 30 * time.Second // upstreams[].idle_timeout's default
	for _, u := range c.Upstreams {
		stall = max(stall, u.IdleTimeout)
	}
	return stall + 10*time.Second
}

// checkListen checks the peer listener against the URLs peers are reached
// by: https:// exactly when it has TLS, which takes all three files.
func (c *clusterConfig) checkListen() error {
	t := c.TLS
	if t.CertFile == "" && t.KeyFile == "" && t.ClientCAFile == "" {
		if strings.HasPrefix(c.Advertise, "https://") && c.Listen != "" {
			return errors.New("cluster.advertise is https:// but cluster.listen has no cluster.tls")
		}
		return nil
	}
	switch {
	case c.Listen == "":
		return errors.New("cluster.tls needs cluster.listen: peers talk TLS on a port of their own")
	case t.CertFile == "" || t.KeyFile == "" || t.ClientCAFile == "":
		return errors.New("cluster.tls needs cert_file, key_file and client_ca_file: every replica proves itself to the others with a certificate client_ca_file signed")
	case !strings.HasPrefix(c.Advertise, "https://"):
		return fmt.Errorf("cluster.advertise %s: with cluster.tls, peers are reached by https://", c.Advertise)
	}
	for _, p := range c.Peers {
		if !strings.HasPrefix(p, "https://") {
			return fmt.Errorf("cluster.peers: %s: with cluster.tls, peers are reached by https://", p)
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("cluster.listen %q: want host:port, like :5001", c.Listen)
	}
	return nil
}

// logger is the log the configuration asks for, written to out.
func (c *fileConfig) logger(out io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.LogLevel)) // checked by validate
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}
