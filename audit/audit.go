// Package audit is Wharf's audit trail: one JSON line for every pull a
// client makes and every image a job pushes, who and what, for the
// security team that asks who pulled an image and when, long after the
// request logs are gone. It imports nothing of Wharf's: the registry
// surface writes pulls and the jobs write pushes.
package audit

import (
	"encoding/json"
	"io"
	"os"
	"sync"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Actions of a Record.
const (
	Pull = "pull" // a client read a manifest or a blob
	Push = "push" // a job put an image on a target
)

// Record is one line of the audit log. Field names are stable: tools
// parse them.
type Record struct {
	Time   time.Time `json:"time"`
	Action string    `json:"action"` // Pull, Push
	// User is who pulled ("" for anonymous; "api-token" for the token);
	// Address the client's address (the one behind a trusted proxy).
	User    string `json:"user,omitempty"`
	Address string `json:"address,omitempty"`
	// Upstream served a pull; Target took a push.
	Upstream   string `json:"upstream,omitempty"`
	Target     string `json:"target,omitempty"`
	Repository string `json:"repository"`
	Reference  string `json:"reference,omitempty"` // a tag, or the digest asked for
	Digest     string `json:"digest,omitempty"`
	Kind       string `json:"kind,omitempty"` // manifest, blob, image
	// Result is the cache's answer to a pull (hit, miss, …) or a push's
	// outcome (pushed, failed); Status a pull's HTTP status.
	Result string `json:"result"`
	Status int    `json:"status,omitempty"`
	Job    string `json:"job,omitempty"`
	Rule   string `json:"rule,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Config is the audit: block of the configuration.
type Config struct {
	// File is where lines go: a path, or "-" for standard output (where
	// a container's logs are collected). "": no audit log.
	File string `yaml:"file"`
	// MaxSizeMB rotates the file once it reaches this size (0: never:
	// the file only grows, for an outside logrotate that copies and
	// truncates); MaxBackups rotated files are kept (0: all).
	MaxSizeMB  int `yaml:"max_size_mb"`
	MaxBackups int `yaml:"max_backups"`
}

// Log writes Records, one JSON line each, whole lines only however many
// goroutines write.
type Log struct {
	mu  sync.Mutex
	w   io.Writer
	c   io.Closer
	now func() time.Time
}

// Open opens the audit log cfg describes; nil (a no-op Log) when File is
// "".
func Open(cfg Config) (*Log, error) {
	switch cfg.File {
	case "":
		return nil, nil
	case "-":
		return &Log{w: os.Stdout, now: time.Now}, nil
	}
	if cfg.MaxSizeMB > 0 {
		lj := &lumberjack.Logger{Filename: cfg.File, MaxSize: cfg.MaxSizeMB, MaxBackups: cfg.MaxBackups, LocalTime: false}
		return &Log{w: lj, c: lj, now: time.Now}, nil
	}
	f, err := os.OpenFile(cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	return &Log{w: f, c: f, now: time.Now}, nil
}

// New writes to w: for tests and for callers that own the destination.
func New(w io.Writer) *Log { return &Log{w: w, now: time.Now} }

// Write records r, stamped now if it has no time. A nil Log writes
// nothing. A failed write is not the request's failure: it is dropped.
func (l *Log) Write(r Record) {
	if l == nil {
		return
	}
	if r.Time.IsZero() {
		r.Time = l.now().UTC()
	}
	line, err := json.Marshal(r)
	if err != nil {
		return
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Write(line)
}

// Close closes the file, if Open opened one.
func (l *Log) Close() error {
	if l == nil || l.c == nil {
		return nil
	}
	return l.c.Close()
}
