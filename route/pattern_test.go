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
