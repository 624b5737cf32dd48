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
	now     func() time.Time

	next  atomic.Int64 // unix nanos of the next stat
	mu    sync.Mutex
	hash  map[string][]byte
	stat  os.FileInfo
	dummy []byte // a hash of nothing anyone knows, at the file's highest cost
}

func loadUsers(path string, warn func(string, ...any), changed func(), now func() time.Time) (*users, error) {
	u := &users{path: path, warn: warn, changed: changed, now: now}
	if err := u.reload(); err != nil {
		return nil, err
	}
	return u, nil
}

// refresh reads the file again if it changed, looking at most once per
// recheck: a removed or changed user is out within it.
func (u *users) refresh() {
	if now := u.now().UnixNano(); now >= u.next.Load() {
		u.next.Store(now + int64(recheck))
		if err := u.reload(); err != nil {
			u.warn("htpasswd not re-read; the users loaded before stay", "file", u.path, "error", err)
		}
	}
}

// lookup returns name's bcrypt hash, and a hash of the same cost to spend
// the same time on when name is not a user.
func (u *users) lookup(name string) (hash []byte, ok bool, dummy []byte) {
	u.refresh()
	u.mu.Lock()
	defer u.mu.Unlock()
	h, ok := u.hash[name]
	return h, ok, u.dummy
}

func (u *users) reload() error {
	fi, err := os.Stat(u.path)
	if err != nil {
		return err
	}
	u.mu.Lock()
	same := u.stat != nil && os.SameFile(fi, u.stat) && fi.ModTime().Equal(u.stat.ModTime()) && fi.Size() == u.stat.Size()
	dummy := u.dummy
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
	cost := bcrypt.MinCost
	for _, h := range hash {
		if c, err := bcrypt.Cost(h); err == nil {
			cost = max(cost, c)
		}
	}
	if c, err := bcrypt.Cost(dummy); err != nil || c != cost {
		if dummy, err = bcrypt.GenerateFromPassword([]byte("wharf: no such user"), cost); err != nil {
			return err
		}
	}
	u.mu.Lock()
	u.hash, u.stat, u.dummy = hash, fi, dummy
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
