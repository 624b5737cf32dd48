package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
)

// Signatures, attestations and SBOMs travel with their image: for every
// manifest a job copies, the artifacts that refer to it are found on the
// source (its referrers API, or else the referrers tag schema) and cosign's
// tags beside them, cached like any pull, and put on the target the way it
// supports (its referrers API indexes what is pushed with a subject; for a
// target without one, the tag schema's index is kept up to date), digests
// unchanged.

// cosignSuffixes are the tags cosign keeps next to an image:
// sha256-<hex>.sig, .att and .sbom.
var cosignSuffixes = []string{".sig", ".att", ".sbom"}

// maxReferrerDepth bounds referrers of referrers (the signature of an
// attestation of an image is two deep).
const maxReferrerDepth = 2

// referrer is an artifact to copy: its manifests (children first) and, for
// its root, the descriptor an index of referrers lists, the tag it goes
// under (cosign's), and its subject (none for cosign's tags).
type referrer struct {
	nodes   []manifestNode
	entry   ocispec.Descriptor
	tag     string
	subject digest.Digest
}

// schemaTag is the referrers tag schema's tag for dgst: sha256-<hex>.
func schemaTag(dgst digest.Digest) string {
	return dgst.Algorithm().String() + "-" + dgst.Encoded()
}

// addReferrers finds what refers to each manifest of p and adds it to p:
// its blobs to copy, and itself to push after the image.
func (c *Jobs) addReferrers(ctx context.Context, r *run, img *Image, p *plan, subjects []manifestNode, depth int) error {
	for _, s := range subjects {
		found, err := c.findReferrers(ctx, img, s.desc.Digest)
		if err != nil {
			return fmt.Errorf("referrers of %s: %w", s.desc.Digest, err)
		}
		for _, f := range found {
			if p.referred[f.entry.Digest] {
				continue
			}
			p.referred[f.entry.Digest] = true
			desc, body, err := c.manifest(ctx, img, f.entry.Digest.String())
			if err != nil {
				return err
			}
			sub := &plan{seen: p.seen}
			if err := c.walk(ctx, r, img, sub, desc, body, 0); err != nil {
				return err
			}
			p.blobs = append(p.blobs, sub.blobs...)
			f.nodes = sub.nodes
			if f.entry.ArtifactType == "" || f.entry.MediaType == "" {
				f.entry = entryOf(desc, body, f.entry)
			}
			p.referrers = append(p.referrers, f)
			if depth+1 < maxReferrerDepth {
				if err := c.addReferrers(ctx, r, img, p, sub.nodes[len(sub.nodes)-1:], depth+1); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// referrerPrint sums up what refers to manifest dgst of up/repo now (its
// referrers and cosign's tags): "" for nothing, else a digest of their
// digests. A rule records it with each tag it pushes, and pushes the tag
// again (its new signatures, attestations, SBOMs) when it changes.
func (c *Jobs) referrerPrint(ctx context.Context, up, repo string, dgst digest.Digest) (string, error) {
	found, err := c.findReferrers(ctx, &Image{Upstream: up, Repository: repo}, dgst)
	if err != nil || len(found) == 0 {
		return "", err
	}
	ds := make([]string, len(found))
	for i, f := range found {
		ds[i] = f.entry.Digest.String()
	}
	slices.Sort(ds)
	return digest.FromString(strings.Join(slices.Compact(ds), ",")).Encoded()[:32], nil
}

// findReferrers lists what refers to dgst in img's source repository:
// the referrers API's list, or without one the tag schema's index, and
// cosign's tags. Which tags exist is read from the repository's tag list
// (cached for tag_ttl): one request per repository, not four per manifest.
func (c *Jobs) findReferrers(ctx context.Context, img *Image, dgst digest.Digest) ([]referrer, error) {
	var out []referrer
	var index []byte
	err := c.retry(ctx, func() error {
		doc, _, err := c.cache.Referrers(ctx, img.Upstream, img.Repository, dgst, "")
		index = doc.Body
		return err
	})
	var tags []string
	if noAPI(err) || err == nil {
		err = c.retry(ctx, func() (err error) {
			tags, err = c.cache.Tags(ctx, img.Upstream, img.Repository)
			return err
		})
		if errors.Is(err, cache.ErrNotFound) {
			tags, err = nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	has := func(tag string) bool { return slices.Contains(tags, tag) }
	if index == nil && has(schemaTag(dgst)) {
		// No referrers API: the tag schema's index.
		var desc ocispec.Descriptor
		err = c.retry(ctx, func() (err error) {
			desc, index, err = c.cache.Manifest(ctx, img.Upstream, img.Repository, schemaTag(dgst))
			return err
		})
		if err != nil {
			return nil, err
		}
		if desc.MediaType != ocispec.MediaTypeImageIndex {
			index = nil
		}
	}
	if index != nil {
		var idx ocispec.Index
		if err := json.Unmarshal(index, &idx); err != nil {
			return nil, fmt.Errorf("%w: referrers list: %v", cache.ErrBadUpstream, err)
		}
		for _, m := range idx.Manifests {
			if m.Digest.Validate() == nil {
				out = append(out, referrer{entry: m, subject: dgst})
			}
		}
	}
	for _, suffix := range cosignSuffixes {
		tag := schemaTag(dgst) + suffix
		if !has(tag) {
			continue
		}
		var desc ocispec.Descriptor
		err := c.retry(ctx, func() (err error) {
			desc, _, err = c.cache.Manifest(ctx, img.Upstream, img.Repository, tag)
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, referrer{entry: ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}, tag: tag})
	}
	return out, nil
}

// noAPI: the registry answered the referrers endpoint as one without it
// does (404, or another refusal), not as one that is down.
func noAPI(err error) bool {
	return errors.Is(err, cache.ErrNotFound) || errors.Is(err, cache.ErrRejected)
}

// entryOf is the descriptor an index of referrers lists for a manifest:
// its artifact type (artifactType, else the config's media type) and its
// annotations.
func entryOf(desc ocispec.Descriptor, body []byte, known ocispec.Descriptor) ocispec.Descriptor {
	var m struct {
		MediaType    string             `json:"mediaType"`
		ArtifactType string             `json:"artifactType"`
		Config       ocispec.Descriptor `json:"config"`
		Annotations  map[string]string  `json:"annotations"`
	}
	json.Unmarshal(body, &m)
	e := ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size,
		ArtifactType: known.ArtifactType, Annotations: known.Annotations}
	if e.ArtifactType == "" {
		e.ArtifactType = m.ArtifactType
	}
	if e.ArtifactType == "" {
		e.ArtifactType = m.Config.MediaType
	}
	if e.Annotations == nil {
		e.Annotations = m.Annotations
	}
	return e
}

// pushReferrers puts each referrer on the target: its manifests by digest,
// its root also under its cosign tag, and, where the target has no
// referrers API, into the tag schema's index of its subject.
func (c *Jobs) pushReferrers(ctx context.Context, r *run, img *Image, refs []referrer) error {
	if r.job.PushTo == "" || len(refs) == 0 {
		return nil
	}
	t := c.targets[r.job.PushTo]
	hasAPI := map[digest.Digest]bool{} // by subject, asked once
	for _, f := range refs {
		for i, n := range f.nodes {
			refsTo := []string{n.desc.Digest.String()}
			if i == len(f.nodes)-1 && f.tag != "" {
				refsTo = append(refsTo, f.tag)
			}
			for _, ref := range refsTo {
				if err := c.pushManifest(ctx, r.job.PushTo, img.TargetRepo, ref, n); err != nil {
					return fmt.Errorf("push referrer %s: %w", targetRef(img.TargetRepo, ref), explain(err, r.job.PushTo, img.TargetRepo, ref))
				}
			}
		}
		if f.subject == "" {
			continue
		}
		api, asked := hasAPI[f.subject]
		if !asked {
			err := c.retryTarget(ctx, r.job.PushTo, func() error {
				_, _, err := t.Referrers(ctx, img.TargetRepo, f.subject, "")
				api = err == nil
				if s := cache.Status(err); err != nil && (s == 0 || s == http.StatusTooManyRequests || s >= 500) {
					return err
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("ask the target for referrers of %s: %w", f.subject, err)
			}
			hasAPI[f.subject] = api
		}
		if !api {
			if err := c.indexReferrer(ctx, r.job.PushTo, img.TargetRepo, f); err != nil {
				return fmt.Errorf("referrers tag %s: %w", targetRef(img.TargetRepo, schemaTag(f.subject)), explain(err, r.job.PushTo, img.TargetRepo, schemaTag(f.subject)))
			}
		}
	}
	r.change(img, func(img *Image) { img.Referrers = len(refs) })
	return nil
}

// pushManifest puts n under ref on target unless it is there already.
func (c *Jobs) pushManifest(ctx context.Context, target, repo, ref string, n manifestNode) error {
	t := c.targets[target]
	return c.retryTarget(ctx, target, func() error {
		if have, _, err := t.Manifest(ctx, repo, ref, true); err == nil && have.Digest == n.desc.Digest {
			return nil
		}
		return t.PushManifest(ctx, repo, ref, n.desc.MediaType, n.body)
	})
}

// indexReferrer adds f to the tag schema's index of its subject on a target
// without a referrers API, as OCI 1.1 clients do.
func (c *Jobs) indexReferrer(ctx context.Context, target, repo string, f referrer) error {
	t, tag := c.targets[target], schemaTag(f.subject)
	return c.retryTarget(ctx, target, func() error {
		idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
		idx.SchemaVersion = 2
		_, rc, err := t.Manifest(ctx, repo, tag, false)
		switch {
		case err == nil:
			err = json.NewDecoder(rc).Decode(&idx)
			rc.Close()
			if err != nil {
				return fmt.Errorf("the target's %s is not an index: %w", tag, err)
			}
		case cache.Status(err) != http.StatusNotFound:
			return err
		}
		if slices.ContainsFunc(idx.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == f.entry.Digest }) {
			return nil
		}
		idx.Manifests = append(idx.Manifests, f.entry)
		body, err := json.Marshal(idx)
		if err != nil {
			return err
		}
		return t.PushManifest(ctx, repo, tag, ocispec.MediaTypeImageIndex, body)
	})
}
