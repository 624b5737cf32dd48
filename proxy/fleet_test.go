package proxy_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The fleet as one service: whichever replica a call lands on, jobs,
// pins, rules and tags give the same answer.

// fleetPromotion is n replicas on one bucket in front of a source
// registry ("Harbor A") with a push target ("Harbor B"), each with rules.
type fleetPromotion struct {
	replicas []*env
	bucket   *s3test.Server
	src, dst *upstreamtest.Registry
}

func newFleetPromotion(t *testing.T, n int, rules ...replicate.Rule) *fleetPromotion {
	t.Helper()
	f := &fleetPromotion{bucket: s3test.Start(t), src: upstreamtest.New(t), dst: upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))}
	f.replicas = fleetOf(t, n, nil, func(i int, o *envOpts) *env {
		target, err := upstream.New(upstream.Config{Name: "harbor-b", URL: f.dst.URL, Insecure: true, Username: "robot", Password: "s3cret", Push: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		o.jcfg = replicate.Config{Targets: map[string]replicate.Target{"harbor-b": target}, RetryBackoff: 5 * time.Millisecond}
		o.rules = rules
		r, err := storage.OpenBucket(t.Context(), "s3", f.bucket.Params())
		if err != nil {
			t.Fatal(err)
		}
		o.sopts.Bucket = r
		return newEnvOpts(t, t.TempDir(), *o, spec{name: srcHost, reg: f.src, def: true, ttl: time.Hour})
	})
	for _, e := range f.replicas {
		settle(func() int { return n - len(e.fleet.Live()) }, 0)
	}
	return f
}

// Pins set by one replica's job are every replica's: listed by each,
// spared by gc (the bucket hears of them within a second, whether or not
// the config pins anything), and unpinned from any.
func TestFleetPinsAreShared(t *testing.T) {
	f := newFleetPromotion(t, 2)
	img := f.src.PushImage(t, "proj/app", "1.0", 21, 2, 20<<10, amd64)
	a, b := f.replicas[0], f.replicas[1]
	job := a.wait(t, a.submit(t, "application/json", "", `{"images": ["proj/app:1.0"], "pin": true}`))
	if job.State != replicate.StateDone {
		t.Fatalf("job %s", job.State)
	}
	want := `{"pins":[{"upstream":"harbor-a.example.com","repository":"proj/app","reference":"1.0","digest":"` + img.Manifest.Digest.String() + `"}]}`
	for _, e := range f.replicas {
		if r := e.do(t, http.MethodGet, "/api/v1/pins"); r.status != http.StatusOK || string(r.body) != want {
			t.Fatalf("pins on %s: %d %s", e.URL, r.status, r.body)
		}
	}
	bucket, err := storage.OpenBucket(t.Context(), "s3", f.bucket.Params())
	if err != nil {
		t.Fatal(err)
	}
	pinned := settle(func() int {
		res, err := bucket.GC(t.Context(), storage.GCPolicy{PinsAge: time.Hour, Dry: true}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return len(img.Blobs()) + 1 - res.Pinned
	}, 0)
	if pinned != 0 {
		t.Fatalf("gc spares %d fewer blobs than the pinned image has", pinned)
	}
	if r := b.do(t, http.MethodDelete, "/api/v1/pins?image=proj/app:1.0"); r.status != http.StatusNoContent {
		t.Fatalf("unpin on the other replica: %d %s", r.status, r.body)
	}
	for _, e := range f.replicas {
		if r := e.do(t, http.MethodGet, "/api/v1/pins"); r.status != http.StatusOK || string(r.body) != `{"pins":[]}` {
			t.Fatalf("pins on %s after unpin: %d %s", e.URL, r.status, r.body)
		}
	}
	wantError(t, a.do(t, http.MethodDelete, "/api/v1/pins?image=proj/app:1.0"), http.StatusNotFound, "PIN_UNKNOWN")
}
