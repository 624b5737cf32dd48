package auth

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// recheck is how often the htpasswd file is looked at for changes: a stat a
// second is free, and a new or removed user takes effect within it.
const recheck = time.Second

// users is an htpasswd file of bcrypt entries (what `htpasswd -B` writes
// and distribution reads), re-read when its size, time or inode changes.
type users struct {
	path    string
	warn    func(msg string, args ...any)
	changed func() // called after a reload: verified credentials are forgotten

	next atomic.Int64 // unix nanos of the next stat
	mu   sync.Mutex
	hash map[string][]byte
	stat os.FileInfo
}

func loadUsers(path string, warn func(string, ...any), changed func()) (*users, error) {
	u := &users{path: path, warn: warn, changed: changed}
	if err := u.reload(); err != nil {
		return nil, err
	}
	return u, nil
}

// lookup returns name's bcrypt hash, reading the file again first if it
// changed.
func (u *users) lookup(name string) ([]byte, bool) {
	if now := time.Now().UnixNano(); now >= u.next.Load() {
		u.next.Store(now + int64(recheck))
		if err := u.reload(); err != nil {
			u.warn("htpasswd not re-read; the users loaded before stay", "file", u.path, "error", err)
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	h, ok := u.hash[name]
	return h, ok
}

func (u *users) reload() error {
	fi, err := os.Stat(u.path)
	if err != nil {
		return err
	}
	u.mu.Lock()
	same := u.stat != nil && os.SameFile(fi, u.stat) && fi.ModTime().Equal(u.stat.ModTime()) && fi.Size() == u.stat.Size()
	u.mu.Unlock()
	if same {
		return nil
	}
	raw, err := os.ReadFile(u.path)
	if err != nil {
		return err
	}
	hash, problems := parseHtpasswd(raw)
	for _, p := range problems {
		u.warn("htpasswd line skipped", "file", u.path, "problem", p)
	}
	u.mu.Lock()
	u.hash, u.stat = hash, fi
	u.mu.Unlock()
	if u.changed != nil {
		u.changed()
	}
	return nil
}

// parseHtpasswd reads "name:hash" lines. A bad line is reported with its
// number and skipped; the others load.
func parseHtpasswd(raw []byte) (map[string][]byte, []string) {
	hash := map[string][]byte{}
	var problems []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, h, ok := strings.Cut(line, ":")
		switch {
		case !ok || name == "":
			problems = append(problems, fmt.Sprintf("line %d: want user:bcrypt-hash", n))
		case !isBcrypt(h):
			problems = append(problems, fmt.Sprintf("line %d: user %q: only bcrypt hashes are accepted (htpasswd -B)", n, name))
		case hash[name] != nil:
			problems = append(problems, fmt.Sprintf("line %d: user %q appears again; the first entry counts", n, name))
		default:
			hash[name] = []byte(h)
		}
	}
	if err := sc.Err(); err != nil {
		problems = append(problems, err.Error())
	}
	return hash, problems
}

func isBcrypt(h string) bool {
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return false
	}
	return strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")
}
