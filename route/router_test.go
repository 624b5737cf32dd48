package route

import "testing"

// A registry's own host names its upstream in a sync file, unless a name
// or an alias already means something; pulls do not route by it.
func TestHostsNameTheirUpstream(t *testing.T) {
	r, err := NewRouter([]Upstream{{Name: "harbor-a", Hosts: []string{"127.0.0.1:15201"}, Default: true},
		{Name: "docker.io", Aliases: []string{"registry-1.docker.io"}, Hosts: []string{"registry-1.docker.io"}},
		{Name: "ghcr.io", Hosts: []string{"harbor-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"127.0.0.1:15201": "harbor-a", "registry-1.docker.io": "docker.io", "harbor-a": "harbor-a", "quay.io": ""} {
		if up, _ := r.Registry(key); up != want {
			t.Errorf("%s: %q, want %q", key, up, want)
		}
	}
	if _, _, err := r.Resolve("org/app", "127.0.0.1:15201"); err == nil {
		t.Error("a pull routed by a registry's host")
	}
}
