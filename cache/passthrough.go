package cache

import (
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
	at   int64 // where rc stands in the blob
}

// startDirect switches r to reading upstream from r.off. The bytes before
// r.off are hashed too, so the whole blob is verified: read again from the
// fill's temporary file, which r still holds open, when it has them; else
// (a fill that never fetched: the store was full) fetched from upstream
// and skipped. Such a fill also leaves the size to this request.
func (r *fillReader) startDirect() error {
	f := r.f
	h := f.dgst.Algorithm().Hash()
	from := int64(0)
	if r.off > 0 && f.file != nil && r.off <= r.landed() {
		if _, err := io.Copy(h, io.NewSectionReader(f.file, 0, r.off)); err != nil {
			return err
		}
		from = r.off
	}
	rc, n, err := f.src.Blob(r.ctx, f.repo, f.dgst, from)
	if err != nil {
		return classify(err)
	}
	size := f.size
	if size < 0 && n >= 0 {
		size = from + n
	}
	if size < 0 {
		size = f.want // upstream sends no length: its manifest's, if the fill's repository has one
	}
	if size < 0 {
		rc.Close()
		return fmt.Errorf("%w: pass-through of %s needs the blob's size, and neither upstream nor a manifest gave it", ErrUnavailable, f.dgst)
	}
	if _, err := io.CopyN(h, rc, r.off-from); err != nil {
		rc.Close()
		return fmt.Errorf("%w: pass-through of %s: %w", ErrUnavailable, f.dgst, err)
	}
	r.direct = &direct{rc: rc, hash: h, size: size, at: r.off}
	f.passthrough.Inc()
	note(r.ctx, f.up, ResultPassthrough)
	return nil
}

// landed is how many bytes of the blob the fill's temporary file holds.
func (r *fillReader) landed() int64 {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return r.f.written
}

// moveDirect brings r's upstream stream to r.off: forward by reading on
// (hashing what it skips, so the blob is still verified whole), backward
// by dropping it for a new one.
func (r *fillReader) moveDirect() {
	d := r.direct
	if d.at > r.off {
		r.stopDirect()
		return
	}
	n, err := io.CopyN(d.hash, d.rc, r.off-d.at)
	d.at += n
	if err != nil {
		r.stopDirect()
	}
}

// stopDirect drops r's upstream stream: a read elsewhere starts a new one.
func (r *fillReader) stopDirect() {
	if r.direct != nil {
		r.direct.rc.Close()
		r.direct = nil
	}
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
		d.at = r.off
		return n, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: pass-through of %s: %w", ErrUnavailable, r.f.dgst, err)
	}
	r.off += int64(n)
	d.at = r.off
	return n, nil
}
