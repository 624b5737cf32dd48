package replicate

import (
	"strings"
)

// Rename maps source repositories to target ones: one whose name starts
// with From goes to To followed by the rest of the name. Jobs (the API's
// rename list) and replication rules (their rename map) take the same
// rule, TargetRepo's.
type Rename struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// TargetRepo is where repo of upstream up goes on a push target: the
// longest From among renames that is a prefix of its routed name,
// "<upstream>/<repo>", or of the name as the user wrote it (written, for a
// reference; "" for none), replaced by its To. The longest wins, whatever
// the order, so a rule's map and a job's list mean the same. No match
// keeps the repository path.
func TargetRepo(renames []Rename, up, repo, written string) string {
	var best Rename
	rest := ""
	for _, rn := range renames {
		if rn.From == "" || len(rn.From) <= len(best.From) {
			continue
		}
		for _, name := range []string{up + "/" + repo, written} {
			if r, ok := strings.CutPrefix(name, rn.From); ok && name != "" {
				best, rest = rn, r
				break
			}
		}
	}
	if best.From == "" {
		return repo
	}
	return best.To + rest
}
