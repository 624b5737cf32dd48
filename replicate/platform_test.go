package replicate

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Filters match as containerd matches: normalised names and variants.
func TestPlatformFilter(t *testing.T) {
	for _, c := range []struct {
		filter string
		child  ocispec.Platform
		want   bool
	}{
		{"linux/amd64", ocispec.Platform{OS: "linux", Architecture: "amd64"}, true},
		{"linux/amd64", ocispec.Platform{OS: "linux", Architecture: "x86_64"}, true},
		{"linux/x86_64", ocispec.Platform{OS: "linux", Architecture: "amd64"}, true},
		{"linux/arm64", ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, true},
		{"linux/arm64/v8", ocispec.Platform{OS: "linux", Architecture: "aarch64"}, true},
		{"linux/arm", ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, true},
		{"linux/arm/v7", ocispec.Platform{OS: "linux", Architecture: "arm"}, true},
		{"linux/arm/v6", ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, false},
		{"linux/amd64", ocispec.Platform{OS: "linux", Architecture: "arm64"}, false},
		{"linux/amd64", ocispec.Platform{OS: "windows", Architecture: "amd64"}, false},
		{"LINUX/AMD64", ocispec.Platform{OS: "linux", Architecture: "amd64"}, true},
	} {
		f, err := ParsePlatform(c.filter)
		if err != nil {
			t.Fatalf("%s: %v", c.filter, err)
		}
		if got := wanted([]Platform{f}, &c.child); got != c.want {
			t.Errorf("%s against %+v: %v, want %v", c.filter, c.child, got, c.want)
		}
	}
	for _, bad := range []string{"linux", "", "linux/", "/amd64", "linux/amd64/v2/x"} {
		if _, err := ParsePlatform(bad); err == nil {
			t.Errorf("ParsePlatform(%q) accepted", bad)
		}
	}
	if got := platformString(&ocispec.Platform{OS: "linux", Architecture: "aarch64"}); got != "linux/arm64" {
		t.Errorf("report name %q", got)
	}
}
