package upstreamtest

import (
	"os"
	"os/exec"
	"testing"
)

// Tests that need root or a system tool are mandatory in CI (where CI is
// set and `make test` installs everything) and skip with the reason on a
// developer's machine, so that `go test ./...` passes there too.

// inCI reports whether the tests run in CI, where nothing may be skipped.
func inCI() bool { return os.Getenv("CI") != "" }

// Tool returns the path of a program a test drives: a failure in CI, a
// skip elsewhere.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if inCI() {
		t.Fatalf("%s not found: `make test` installs it (.ci/install-tools)", name)
	}
	t.Skipf("%s not found; run `make test` (which installs it) to include this test", name)
	return ""
}

// NeedRoot stops a test that cannot run without root (what for says why):
// a failure in CI, a skip elsewhere.
func NeedRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if inCI() {
		t.Fatalf("%s needs root, and CI runs as root", what)
	}
	t.Skipf("%s needs root; CI runs it", what)
}
