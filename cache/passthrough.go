package cache

import (
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
)

// When the store cannot take a blob (disk full, I/O error), the fill fails
// but its clients do not: each goes on straight from upstream, from the
// offset it has reached, hashing the whole blob as it goes and holding back
// the final bytes until they verify, exactly as a fill would. Nothing of it
// is stored.

// direct is a reader's own upstream stream after its fill failed to store.
type direct struct {
	rc   io.ReadCloser
	hash hash.Hash
	size int64
}

// startDirect switches r to reading upstream from r.off. The bytes before
// r.off were read from the fill's temporary file, which r still holds open;
// they are hashed again so the whole blob is verified. A fill that never
// fetched (the store was full) leaves the size to this request.
func (r *fillReader) startDirect() error {
	f := r.f
	h := f.dgst.Algorithm().Hash()
	if r.off > 0 {
		if f.file == nil {
			return errors.New("pass-through from an offset of a fill that never started")
		}
		if _, err := io.Copy(h, io.NewSectionReader(f.file, 0, r.off)); err != nil {
			return err
		}
	}
	rc, n, err := f.src.Blob(r.ctx, f.repo, f.dgst, r.off)
	if err != nil {
		return classify(err)
	}
	size := f.size
	if size < 0 && n >= 0 {
		size = r.off + n
	}
	if size < 0 {
		rc.Close()
		return errors.New("pass-through needs the blob's size, and upstream did not send it")
	}
	r.direct = &direct{rc: rc, hash: h, size: size}
	f.passthrough.Inc()
	return nil
}

func (r *fillReader) readDirect(p []byte) (int, error) {
	d := r.direct
	if r.off >= d.size {
		return 0, io.EOF
	}
	n, err := io.ReadFull(d.rc, p[:min(int64(len(p)), d.size-r.off)])
	d.hash.Write(p[:n])
	if r.off+int64(n) == d.size {
		// This chunk ends the blob: deliver it only if the whole verifies.
		if got := digest.NewDigest(r.f.dgst.Algorithm(), d.hash); got != r.f.dgst {
			return 0, fmt.Errorf("%w: pass-through of %s hashed to %s", ErrBadUpstream, r.f.dgst, got)
		}
		r.off += int64(n)
		return n, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: pass-through of %s: %w", ErrUnavailable, r.f.dgst, err)
	}
	r.off += int64(n)
	return n, nil
}
