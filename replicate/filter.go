package replicate

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// filterIndexes rewrites the indexes among nodes (children first, as walk
// orders them) to list only the children the job copies, so that a target
// that wants every child of an index present (Harbor, distribution) takes
// them. Every other byte of an index stays as it was; a rewritten index has
// a new digest, and so has any index above it, which the image reports.
func filterIndexes(r *run, img *Image, nodes []manifestNode) []manifestNode {
	var left map[digest.Digest]bool
	r.change(img, func(img *Image) {
		left = map[digest.Digest]bool{}
		for _, sc := range img.NotCopied {
			left[sc.Digest] = true
		}
	})
	if len(left) == 0 {
		return nodes
	}
	renamed := map[digest.Digest]ocispec.Descriptor{} // an index's old digest → its rewrite
	out := make([]manifestNode, len(nodes))
	for i, n := range nodes {
		out[i] = n
		var doc map[string]json.RawMessage
		var children []ocispec.Descriptor
		if json.Unmarshal(n.body, &doc) != nil || doc["manifests"] == nil || json.Unmarshal(doc["manifests"], &children) != nil {
			continue
		}
		var raw []json.RawMessage
		json.Unmarshal(doc["manifests"], &raw)
		var kept []json.RawMessage
		changed := false
		for j, child := range children {
			switch d, ok := renamed[child.Digest]; {
			case left[child.Digest]:
				changed = true
			case ok:
				var entry map[string]json.RawMessage
				json.Unmarshal(raw[j], &entry)
				entry["digest"], _ = json.Marshal(d.Digest)
				entry["size"], _ = json.Marshal(d.Size)
				b, _ := json.Marshal(entry)
				kept, changed = append(kept, b), true
			default:
				kept = append(kept, raw[j])
			}
		}
		if !changed {
			continue
		}
		doc["manifests"], _ = json.Marshal(kept)
		body, err := json.Marshal(doc)
		if err != nil {
			continue
		}
		desc := n.desc
		desc.Digest, desc.Size = digest.FromBytes(body), int64(len(body))
		renamed[n.desc.Digest] = desc
		out[i] = manifestNode{desc: desc, body: body}
	}
	root := out[len(out)-1]
	if root.desc.Digest != nodes[len(nodes)-1].desc.Digest {
		r.change(img, func(img *Image) {
			img.FilteredDigest = root.desc.Digest
			img.Note = fmt.Sprintf("the index pushed lists only the copied platforms, so it has a new digest, %s (the source's is %s)", root.desc.Digest, img.Digest)
		})
	}
	return out
}
