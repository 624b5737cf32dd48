package replicate

import (
	"fmt"
	"strings"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Platform selects the children of an index a job copies. It is matched
// the way containerd matches, through containerd's own platforms package:
// names are normalised (x86_64 is amd64, aarch64 is arm64, arm64/v8 is
// arm64, arm is arm/v7), so a filter means what it means to a puller.
type Platform struct{ OS, Architecture, Variant string }

// ParsePlatform reads "os/arch" or "os/arch/variant", normalised.
func ParsePlatform(s string) (Platform, error) {
	if strings.Count(s, "/") < 1 {
		return Platform{}, fmt.Errorf("platform %q: want os/arch or os/arch/variant", s)
	}
	p, err := platforms.Parse(s)
	if err != nil {
		return Platform{}, fmt.Errorf("platform %q: want os/arch or os/arch/variant: %v", s, err)
	}
	return Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}, nil
}

func (p Platform) spec() ocispec.Platform {
	return ocispec.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

func (p Platform) String() string { return platforms.Format(p.spec()) }

func parsePlatforms(ss []string) []Platform {
	var ps []Platform
	for _, s := range ss {
		if p, err := ParsePlatform(s); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// wanted reports whether a child of an index is copied: every child
// without a filter, else one whose normalised platform is one of the
// filter's.
func wanted(filter []Platform, p *ocispec.Platform) bool {
	if len(filter) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, f := range filter {
		if platforms.NewMatcher(f.spec()).Match(*p) {
			return true
		}
	}
	return false
}

// platformString names a child's platform for reports.
func platformString(p *ocispec.Platform) string {
	if p == nil {
		return ""
	}
	return platforms.Format(platforms.Normalize(*p))
}
