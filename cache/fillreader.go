package cache

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"time"
)

// errFillDone tells a late reader that the fill has ended: the blob is in
// the store now, or could not be stored and must be fetched again.
var errFillDone = errors.New("fill complete")

// open waits until the fill has started and returns a reader at offset 0.
func (f *fill) open(ctx context.Context) (*fillReader, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if errors.Is(f.err, errStore) {
		f.refs++
		f.idle = time.Time{}
		return &fillReader{f: f, ctx: ctx}, nil // its first Read goes to upstream
	}
	if f.err != nil {
		return nil, f.err
	}
	if f.done {
		// Stored already, and its temporary file may be closed: read the
		// store instead.
		return nil, errFillDone
	}
	f.refs++
	f.idle = time.Time{}
	return &fillReader{f: f, ctx: ctx}, nil
}

// fillReader follows a fill from its own offset. It is an io.ReadSeeker so
// http.ServeContent can answer Range requests on a blob still arriving.
type fillReader struct {
	f      *fill
	ctx    context.Context // the client's: a gone client stops reading, not the fill
	off    int64
	closed bool
	direct *direct  // set once the fill failed to store: see passthrough.go
	own    *os.File // the fill's file with an offset of its own, for SendTo
	noOwn  bool     // the platform cannot give one
}

// state returns how far a reader may go, whether the blob is final, and a
// channel that is closed on the next change. The last byte is held back
// until the blob verifies, so no client completes a read of wrong bytes.
func (r *fillReader) state() (avail int64, done bool, wake <-chan struct{}, err error) {
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	avail = f.written
	if !f.verified && !f.done {
		avail--
	}
	return avail, f.done, f.wake, f.err
}

func (r *fillReader) Read(p []byte) (int, error) {
	for {
		if r.direct != nil && r.direct.at != r.off {
			r.moveDirect() // a seek moved r
		}
		if r.direct != nil {
			return r.readDirect(p)
		}
		avail, done, wake, err := r.state()
		if errors.Is(err, errStore) {
			if err := r.startDirect(); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if r.off < avail {
			n, rerr := r.f.file.ReadAt(p[:min(int64(len(p)), avail-r.off)], r.off)
			r.off += int64(n)
			if rerr == io.EOF && n > 0 {
				rerr = nil
			}
			return n, rerr
		}
		if done {
			return 0, io.EOF
		}
		if err := r.wait(wake); err != nil {
			return 0, err
		}
	}
}

// wait blocks until the fill changes or the client goes away.
func (r *fillReader) wait(wake <-chan struct{}) error {
	r.f.waiting.Inc()
	defer r.f.waiting.Dec()
	select {
	case <-wake:
		return nil
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
}

func (r *fillReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		size, err := r.size()
		if err != nil {
			return 0, err
		}
		offset += size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = offset
	return offset, nil
}

// size is the blob's length, waiting for the end of the fill if upstream
// did not announce it.
func (r *fillReader) size() (int64, error) {
	for r.f.size < 0 {
		if r.direct != nil {
			return r.direct.size, nil
		}
		_, done, wake, err := r.state()
		if errors.Is(err, errStore) {
			if err := r.startDirect(); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if done {
			r.f.mu.Lock()
			n := r.f.written
			r.f.mu.Unlock()
			return n, nil
		}
		if err := r.wait(wake); err != nil {
			return 0, err
		}
	}
	return r.f.size, nil
}

func (r *fillReader) Close() error {
	if !r.closed {
		r.closed = true
		r.stopDirect()
		if r.own != nil {
			r.own.Close()
		}
		r.f.release()
	}
	return nil
}

// SendTo writes up to n bytes of the blob from the reader's offset through
// dst.ReadFrom with a file: to a socket the kernel copies them itself
// (sendfile), not through user space. The last byte is held back until the
// blob verifies, and a failed fill fails, exactly as with Read. ok false,
// with err nil, means the rest must be read instead: the fill could not be
// stored and goes on from upstream, or the platform cannot reopen the file.
func (r *fillReader) SendTo(dst io.ReaderFrom, n int64) (sent int64, ok bool, err error) {
	for sent < n {
		if r.direct != nil || !r.reopen() {
			return sent, false, nil
		}
		avail, done, wake, err := r.state()
		if errors.Is(err, errStore) {
			return sent, false, nil
		}
		if err != nil {
			return sent, true, err
		}
		if r.off < avail {
			if _, err := r.own.Seek(r.off, io.SeekStart); err != nil {
				return sent, true, err
			}
			m, err := dst.ReadFrom(&io.LimitedReader{R: r.own, N: min(avail-r.off, n-sent)})
			r.off += m
			sent += m
			if err != nil {
				return sent, true, err
			}
			continue
		}
		if done {
			return sent, true, nil
		}
		if err := r.wait(wake); err != nil {
			return sent, true, err
		}
	}
	return sent, true, nil
}

// reopen gives the reader the fill's file with an offset of its own
// (sendfile sends from a file's offset, and readers share the fill's
// file), through /proc/self/fd: the temporary file may have been renamed
// into the store already. It reports whether the reader has one.
func (r *fillReader) reopen() bool {
	if r.own != nil || r.noOwn {
		return r.own != nil
	}
	r.noOwn = true
	sc, err := r.f.file.SyscallConn()
	if err != nil {
		return false
	}
	sc.Control(func(fd uintptr) {
		if f, err := os.Open("/proc/self/fd/" + strconv.FormatUint(uint64(fd), 10)); err == nil {
			r.own, r.noOwn = f, false
		}
	})
	return r.own != nil
}
