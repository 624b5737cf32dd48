package cache

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
)

// Peers is what the cache needs of the fleet; cluster.Cluster is one.
type Peers interface {
	// Owner is the replica that fetches dgst for the fleet, and whether
	// it is this one.
	Owner(dgst digest.Digest) (peer string, self bool)
	// Blob asks peer for blob dgst of repo on upstream up from offset on.
	Blob(ctx context.Context, peer, up, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, int64, error)
	// TagOwner is the replica that resolves tag for the fleet, and
	// whether it is this one.
	TagOwner(up, repo, tag string) (peer string, self bool)
	// Tag asks peer what tag resolves to (with head, without the
	// manifest): its answer, read by askTagOwner.
	Tag(ctx context.Context, peer, up, repo, tag string, head bool) (*http.Response, error)
	// TagsOwner is the replica that lists a repository's tags upstream
	// for the fleet, and whether it is this one.
	TagsOwner(up, repo string) (peer string, self bool)
	// Tags asks peer for repo's tag list no older than maxAge: its answer,
	// read by askTagsOwner.
	Tags(ctx context.Context, peer, up, repo string, maxAge time.Duration) (*http.Response, error)
	// Others is the live replicas but this one.
	Others() []string
	// Repositories asks peer for the repositories it holds: its answer.
	Repositories(ctx context.Context, peer string) (*http.Response, error)
}

type forPeerKey struct{}

// ForPeer marks ctx as a peer's request, made because this replica owns
// what it asks for in that peer's view: what it misses is fetched here,
// never asked of yet another owner (views of the fleet differ for a
// probe's time, and a chain of owners could be a loop).
func ForPeer(ctx context.Context) context.Context { return context.WithValue(ctx, forPeerKey{}, true) }

func forPeer(ctx context.Context) bool { v, _ := ctx.Value(forPeerKey{}).(bool); return v }

// IsForPeer reports whether ctx is a peer's request (ForPeer): what it is
// sent is counted where the client asked, not here.
func IsForPeer(ctx context.Context) bool { return forPeer(ctx) }

// throughOwner fetches dgst through its owner when that is another
// replica: the owner fills it once for every replica asking. An owner
// that cannot be reached or refuses is passed by, and so is one whose
// stream breaks or stalls: the fill goes on from upstream itself, from
// the byte it had reached, slower but never an error. The owner's answer, like upstream's,
// shows that repo holds the blob; the bytes are verified here all the same.
func (c *Cache) throughOwner(ctx context.Context, u Upstream, repo string, dgst digest.Digest, upstream blobOpener) blobOpener {
	peer, self := c.peers.Owner(dgst)
	if self || forPeer(ctx) {
		return upstream
	}
	viaPeer := true // the first read only: an owner whose stream broke or stalled is not asked again
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		if viaPeer {
			viaPeer = false
			rc, size, err := c.peers.Blob(ctx, peer, u.Name, repo, dgst, offset)
			if err == nil {
				c.metrics.peer.WithLabelValues("owner").Inc()
				return rc, size, fromPeer, nil
			}
			if ctx.Err() != nil {
				return nil, 0, fromPeer, err
			}
			switch Status(err) {
			case http.StatusNotFound:
				return nil, 0, fromPeer, fmt.Errorf("%w: %w", ErrNotFound, err)
			case http.StatusUnauthorized:
				c.metrics.peer.WithLabelValues("refused").Inc()
				c.log.Warn("digest owner refused this replica's signed request; filling from upstream: the replicas' cluster.secret_file differ, "+
					"their clocks are more than 5 minutes apart, or one runs a version before signed peer requests", "digest", dgst, "error", err)
			default:
				c.metrics.peer.WithLabelValues("unreachable").Inc()
				c.log.Warn("digest owner unreachable; filling from upstream", "digest", dgst, "error", err)
			}
		}
		return upstream(ctx, offset)
	}
}
