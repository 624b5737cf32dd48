package replicate

import (
	"strings"
	"testing"
)

// A sync file's mistakes are named on their own line, in its own terms.
func TestSyncYAMLErrors(t *testing.T) {
	for body, want := range map[string]string{
		"h:\n  images:\n    proj/app:\n    - \"1.0\"\n   tls-verify: false\n": "line 5: did not find expected key",
		"h:\n  images:\n    proj/app: [\"1.0\"]\n  image:\n    x: [a]\n":      `line 4: unknown key "image" (a registry takes images,`,
		"h:\n  images:\n    proj/app: \"1.0\"\n":                              "line 3: want a list of tags or digests",
	} {
		_, _, err := SyncList(t.Context(), []byte(body), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", body, err, want)
		}
	}
}
