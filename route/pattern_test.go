package route

import "testing"

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"docker.io/*", "docker.io/library/nginx", true},
		{"docker.io/*", "docker.io/nginx", true},
		{"docker.io/*", "docker.iox/library/nginx", false},
		{"docker.io/*", "ghcr.io/docker.io/x", false},
		{"harbor-a.example.com/proj/*", "harbor-a.example.com/proj/api", true},
		{"harbor-a.example.com/proj/*", "harbor-a.example.com/proj/team/api", true},
		{"harbor-a.example.com/proj/*", "harbor-a.example.com/project/api", false},
		{"harbor-a.example.com/proj/*", "harbor-a.example.com/proj", false},
		{"*/library/*", "docker.io/library/nginx", true},
		{"ghcr.io/org/app", "ghcr.io/org/app", true},
		{"ghcr.io/org/app", "ghcr.io/org/app2", false},
		{"ghcr.io/org/app:1.*", "ghcr.io/org/app:1.2", true},
		{"ghcr.io/org/app:1.*", "ghcr.io/org/app:2.0", false},
		{"*", "docker.io/library/nginx", false},
		{"*/*", "docker.io/library/nginx", true},
	} {
		if got := Match(c.pattern, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

func TestMayMatchUpstream(t *testing.T) {
	for _, c := range []struct {
		pattern, upstream string
		want              bool
	}{
		{"harbor-a.example.com/proj/*", "harbor-a.example.com", true},
		{"*/*", "harbor-a.example.com", true},
		{"*.example.com/*", "harbor-a.example.com", true},
		{"docker.io/*", "harbor-a.example.com", false},
	} {
		if got := MayMatchUpstream(c.pattern, c.upstream); got != c.want {
			t.Errorf("MayMatchUpstream(%q, %q) = %v", c.pattern, c.upstream, got)
		}
	}
	if Check("[") == nil || Check("") == nil || Check("docker.io/*") != nil {
		t.Fatal("Check")
	}
}

func TestTagFilters(t *testing.T) {
	in, err := Semver(">=1.2 <2")
	if err != nil {
		t.Fatal(err)
	}
	for tag, want := range map[string]bool{"1.2.0": true, "v1.2.3": true, "1.9": true, "1.10.1": true, "2.0.0": false,
		"1.1.9": false, "latest": false, "1.2.0-rc1": false, "sha256-abc.sig": false} {
		if got := in(tag); got != want {
			t.Errorf("semver >=1.2 <2 on %q: %v", tag, got)
		}
	}
	if _, err := Semver("not a range"); err == nil {
		t.Fatal("a bad range was accepted")
	}
	re, err := Regexp(`^v?[0-9]+\.`)
	if err != nil || !re("v1.2") || re("latest") {
		t.Fatal("regexp filter")
	}
	if _, err := Regexp("(("); err == nil {
		t.Fatal("a bad regexp was accepted")
	}
}

func TestRouterResolve(t *testing.T) {
	r, err := NewRouter([]Upstream{{Name: "docker.io", Aliases: []string{"index.docker.io"}, Default: true}, {Name: "ghcr.io"}, {Name: "harbor.internal"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, ns, up, repo, err string }{
		{"alpine", "", "docker.io", "library/alpine", ""},
		{"org/app", "", "docker.io", "org/app", ""},
		{"ghcr.io/org/app", "", "ghcr.io", "org/app", ""},
		{"GHCR.IO/org/app", "", "ghcr.io", "org/app", ""},
		{"docker.io/alpine", "", "docker.io", "library/alpine", ""},
		{"index.docker.io/org/app", "", "docker.io", "org/app", ""},
		{"quay.io/org/app", "", "", "", "no upstream is configured for quay.io"},
		{"localhost/app", "", "", "", "no upstream is configured for localhost"},
		{"org/app", "ghcr.io", "ghcr.io", "org/app", ""},
		{"ghcr.io/org/app", "ghcr.io", "ghcr.io", "org/app", ""},
		{"alpine", "docker.io", "docker.io", "library/alpine", ""},
		{"org/app", "quay.io", "", "", "no upstream is configured for namespace quay.io"},
	} {
		up, repo, err := r.Resolve(c.name, c.ns)
		if up != c.up || repo != c.repo || (err == nil) != (c.err == "") || (err != nil && err.Error() != c.err) {
			t.Errorf("Resolve(%q, %q) = %q %q %v", c.name, c.ns, up, repo, err)
		}
	}
	if _, err := NewRouter([]Upstream{{Name: "a", Default: true}, {Name: "b", Default: true}}); err == nil {
		t.Error("two defaults accepted")
	}
	if _, err := NewRouter([]Upstream{{Name: "a"}, {Name: "b", Aliases: []string{"A"}}}); err == nil {
		t.Error("a name meaning two upstreams accepted")
	}
	if _, _, err := (&Router{keys: map[string]string{}}).Resolve("x/y", ""); err == nil {
		t.Error("no default: resolved")
	}
}
