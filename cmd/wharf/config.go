package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"
)

// fileConfig is the YAML file, key for key. External tools generate these
// names, so they change only with a migration.
type fileConfig struct {
	Listen      string `yaml:"listen"`
	DebugListen string `yaml:"debug_listen"`
	LogLevel    string `yaml:"log_level"`
	Storage     struct {
		Root          string  `yaml:"root"`
		MaxSize       string  `yaml:"max_size"`
		HighWatermark float64 `yaml:"high_watermark"`
		LowWatermark  float64 `yaml:"low_watermark"`
		maxBytes      int64
	} `yaml:"storage"`
	Pins   []string `yaml:"pins"`
	Server struct {
		ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
		IdleTimeout       time.Duration `yaml:"idle_timeout"`
		ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`
	} `yaml:"server"`
	Upstreams []upstreamConfig `yaml:"upstreams"`
}

type upstreamConfig struct {
	Name          string         `yaml:"name"`
	URL           string         `yaml:"url"`
	Aliases       []string       `yaml:"aliases"`
	Default       bool           `yaml:"default"`
	TagTTL        *time.Duration `yaml:"tag_ttl"`
	NegativeTTL   *time.Duration `yaml:"negative_ttl"`
	Revalidate    time.Duration  `yaml:"revalidate_timeout"`
	Username      string         `yaml:"username"`
	Password      string         `yaml:"password"`
	PasswordFile  string         `yaml:"password_file"`
	Insecure      bool           `yaml:"insecure"`
	DialTimeout   time.Duration  `yaml:"dial_timeout"`
	HeaderTimeout time.Duration  `yaml:"header_timeout"`
	IdleTimeout   time.Duration  `yaml:"idle_timeout"`
	MaxConcurrent int            `yaml:"max_concurrent"`
}

// Defaults for tag_ttl and negative_ttl.
const (
	defaultTagTTL      = time.Minute
	defaultNegativeTTL = 15 * time.Second
)

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type`)

// loadConfig reads, decodes (rejecting unknown keys) and validates path,
// resolving secrets from files and the environment.
func loadConfig(path string) (*fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := &fileConfig{Listen: ":5000", LogLevel: "info"}
	cfg.Server.ReadHeaderTimeout = 10 * time.Second
	cfg.Server.IdleTimeout = 2 * time.Minute
	cfg.Server.ShutdownTimeout = 30 * time.Second
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty", path)
		}
		if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
			return nil, fmt.Errorf("%s line %s: unknown key %q", path, m[1], m[2])
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func (c *fileConfig) validate() error {
	if c.Listen == "" {
		return errors.New("listen must be set")
	}
	if c.Storage.Root == "" {
		return errors.New("storage.root must be set")
	}
	if c.Storage.MaxSize != "" {
		n, err := humanize.ParseBytes(c.Storage.MaxSize)
		if err != nil || n == 0 {
			return fmt.Errorf("storage.max_size %q: want a size like 50GiB", c.Storage.MaxSize)
		}
		c.Storage.maxBytes = int64(n)
	}
	if h, l := c.Storage.HighWatermark, c.Storage.LowWatermark; h < 0 || l < 0 || h > 1 || (h > 0 && l > h) {
		return fmt.Errorf("storage watermarks: want 0 < low_watermark <= high_watermark <= 1, got %v and %v", l, h)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if len(c.Upstreams) == 0 {
		return errors.New("at least one upstream is needed")
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Name == "" || u.URL == "" {
			return fmt.Errorf("upstreams[%d]: name and url are required", i)
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
		if u.Revalidate < 0 {
			return fmt.Errorf("upstream %s: revalidate_timeout must not be negative", u.Name)
		}
		if u.MaxConcurrent < 0 {
			return fmt.Errorf("upstream %s: max_concurrent must not be negative", u.Name)
		}
		if err := u.resolveSecrets(); err != nil {
			return fmt.Errorf("upstream %s: %w", u.Name, err)
		}
	}
	return nil
}

// resolveSecrets expands ${VAR} in username and password and reads
// password_file. A variable that is not set is an error, not an empty
// password that fails later in a confusing way.
func (u *upstreamConfig) resolveSecrets() error {
	var missing []string
	expand := func(s string) string {
		return os.Expand(s, func(k string) string {
			v, ok := os.LookupEnv(k)
			if !ok {
				missing = append(missing, k)
			}
			return v
		})
	}
	u.Username, u.Password = expand(u.Username), expand(u.Password)
	if len(missing) > 0 {
		return fmt.Errorf("environment variable %s is not set", strings.Join(missing, ", "))
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
