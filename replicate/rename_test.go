package replicate

import (
	"slices"
	"testing"
)

// One rename rule for jobs and rules: the longest matching prefix of the
// routed name or of the name as written, whatever the order.
func TestTargetRepo(t *testing.T) {
	rn := []Rename{{From: "harbor-a.example.com/", To: "all/"}, {From: "harbor-a.example.com/proj/", To: "proj-b/"}, {From: "proj/web", To: "web-b"}}
	for _, c := range []struct{ up, repo, written, want string }{
		{"harbor-a.example.com", "proj/api", "", "proj-b/api"},
		{"harbor-a.example.com", "other/x", "", "all/other/x"},
		{"docker.io", "library/nginx", "", "library/nginx"},
		{"harbor-a.example.com", "proj/web", "proj/web", "proj-b/web"}, // routed: 26 characters beat the written 8
		{"docker.io", "proj/web", "proj/web", "web-b"},
	} {
		if got := TargetRepo(rn, c.up, c.repo, c.written); got != c.want {
			t.Errorf("%s/%s (%q): %s, want %s", c.up, c.repo, c.written, got, c.want)
		}
		slices.Reverse(rn)
	}
}
