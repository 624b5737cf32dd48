package storage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
)

// Config is the configuration file's storage: block. Check validates it;
// Options opens what it names.
type Config struct {
	Root string `yaml:"root"`
	// Driver is where blobs live durably: filesystem (under root only) or
	// s3 (a bucket shared by every replica, root the local fill buffer
	// and hot cache), through distribution's driver with its parameters.
	Driver string         `yaml:"driver"`
	S3     map[string]any `yaml:"s3"`
	// Redirect sends clients to a presigned URL for blobs in the bucket
	// this replica does not hold, as distribution's redirect option does.
	Redirect      bool    `yaml:"redirect"`
	MaxSize       string  `yaml:"max_size"`
	HighWatermark float64 `yaml:"high_watermark"`
	LowWatermark  float64 `yaml:"low_watermark"`
	MinFree       string  `yaml:"min_free"`
	maxBytes      int64
	minFree       int64   // bytes, or
	minFreeRatio  float64 // a share of the filesystem
}

// Check validates the block, expanding ${VAR} references in the s3
// parameters with expand (keys and secrets come from the environment).
func (s *Config) Check(expand func(string) (string, error)) error {
	if s.Root == "" {
		return errors.New("storage.root must be set")
	}
	if err := s.parseMinFree(); err != nil {
		return err
	}
	if err := s.checkDriver(expand); err != nil {
		return err
	}
	if s.MaxSize != "" {
		n, err := humanize.ParseBytes(s.MaxSize)
		if err != nil || n == 0 {
			return fmt.Errorf("storage.max_size %q: want a size like 50GiB", s.MaxSize)
		}
		s.maxBytes = int64(n)
	}
	if h, l := s.HighWatermark, s.LowWatermark; h < 0 || l < 0 || h > 1 || (h > 0 && l > h) {
		return fmt.Errorf("storage watermarks: want 0 < low_watermark <= high_watermark <= 1, got %v and %v", l, h)
	}
	return nil
}

// MaxBytes is max_size in bytes, 0 for unbounded: the cache's bound.
func (s *Config) MaxBytes() int64 { return s.maxBytes }

// Options are the store's settings, its bucket opened.
func (s *Config) Options() (Options, error) {
	opts := Options{MinFree: s.minFree, MinFreeRatio: s.minFreeRatio}
	if s.Driver == "s3" {
		r, err := OpenBucket(context.Background(), "s3", s.S3)
		if err != nil {
			return opts, fmt.Errorf("storage.s3: %w", err)
		}
		opts.Bucket = r
	}
	return opts, nil
}

// checkDriver validates storage.driver and expands ${VAR} in the string
// values of storage.s3 (keys and secrets come from the environment), an
// unset variable being an error.
func (s *Config) checkDriver(expand func(string) (string, error)) error {
	switch s.Driver {
	case "", "filesystem":
		if len(s.S3) > 0 {
			return errors.New("storage.s3 is set but storage.driver is not s3")
		}
		if s.Redirect {
			return errors.New("storage.redirect needs storage.driver: s3 (it sends clients to the bucket)")
		}
		return nil
	case "s3":
	default:
		return fmt.Errorf("storage.driver %q: want filesystem or s3", s.Driver)
	}
	if b, _ := s.S3["bucket"].(string); b == "" {
		return errors.New("storage.s3.bucket must be set with storage.driver: s3")
	}
	for k, v := range s.S3 {
		str, ok := v.(string)
		if !ok {
			continue
		}
		v, err := expand(str)
		if err != nil {
			return fmt.Errorf("storage.s3.%s: %w", k, err)
		}
		s.S3[k] = v
	}
	return nil
}

// parseMinFree reads storage.min_free: a size (2GiB) or a percentage (5%).
func (s *Config) parseMinFree() error {
	v := strings.TrimSpace(s.MinFree)
	if pct, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
		if err != nil || f <= 0 || f >= 50 {
			return fmt.Errorf("storage.min_free %q: want a percentage above 0 and under 50, like 5%%", s.MinFree)
		}
		s.minFreeRatio = f / 100
		return nil
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n < 1<<20 {
		return fmt.Errorf("storage.min_free %q: want a size of at least 1MiB, like 2GiB, or a percentage, like 5%%", s.MinFree)
	}
	s.minFree = int64(n)
	return nil
}
