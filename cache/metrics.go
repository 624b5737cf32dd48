package cache

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/storage"
)

type metrics struct {
	requests     *prometheus.CounterVec // upstream, kind, result
	fetched      *prometheus.CounterVec // upstream
	filled       *prometheus.CounterVec // source
	fills        prometheus.Gauge
	waiting      prometheus.Gauge
	passthrough  prometheus.Counter
	resumed      prometheus.Counter
	failed       *prometheus.CounterVec // reason
	storeFailed  *prometheus.CounterVec // what
	stale        *prometheus.CounterVec // upstream
	evicted      *prometheus.CounterVec // reason
	evictedBytes prometheus.Counter
	oldest       prometheus.Gauge
	negative     *prometheus.CounterVec // upstream
	eager        prometheus.Counter
	eagerUsed    prometheus.Counter
	remote       *prometheus.CounterVec // result
	peer         *prometheus.CounterVec // result
	proofs       *prometheus.CounterVec // result
}

func newMetrics(reg prometheus.Registerer, store *storage.Store, remembered func() int) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_cache_requests_total",
			Help: "Manifest and blob reads by upstream, kind (manifest, blob) and result (hit, miss).",
		}, []string{"upstream", "kind", "result"}),
		fetched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_upstream_fetched_bytes_total",
			Help: "Bytes of blobs and manifests read from each upstream (not from the bucket or peers).",
		}, []string{"upstream"}),
		filled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_filled_bytes_total",
			Help: "Bytes of blob fills by source: upstream, bucket (the shared remote tier) or peer (the digest's owner among the replicas).",
		}, []string{"source"}),
		fills: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wharf_fills_in_flight",
			Help: "Blob fills from upstream in progress.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wharf_fill_waiting_readers",
			Help: "Client reads of a fill in progress blocked until more bytes land.",
		}),
		passthrough: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wharf_fill_passthrough_total",
			Help: "Client reads served straight from upstream because the store could not take the blob (disk full).",
		}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wharf_fills_resumed_total",
			Help: "Times a fill whose upstream connection broke was resumed with a Range request.",
		}),
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_evictions_total",
			Help: "Blobs removed from the store, by reason (size: over storage.max_size).",
		}, []string{"reason"}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wharf_evicted_bytes_total",
			Help: "Bytes of blobs removed from the store.",
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wharf_store_oldest_access_timestamp_seconds",
			Help: "Last access of the least recently used blob kept by the last eviction pass.",
		}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_stale_served_total",
			Help: "Stale tags served because revalidating them upstream failed or timed out.",
		}, []string{"upstream"}),
		negative: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_negative_hits_total",
			Help: "Manifest requests answered 404 from memory of an earlier upstream 404.",
		}, []string{"upstream"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_fill_failures_total",
			Help: "Blob fills that did not enter the store, by reason (upstream, digest, storage).",
		}, []string{"reason"}),
		eager: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wharf_eager_fills_total",
			Help: "Blob fills started as their image manifest was fetched, before a client asked.",
		}),
		eagerUsed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wharf_eager_fills_used_total",
			Help: "Eager fills a client or job later read (the others are fetched bytes nobody used yet).",
		}),
		remote: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_remote_lookups_total",
			Help: "Blobs looked for in the remote tier (the bucket): hit (filled from it), redirect (the client was sent there), unavailable (it could not be asked; filled from upstream), lost (found, then not readable: the fill went on from upstream).",
		}, []string{"result"}),
		peer: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_peer_fills_total",
			Help: "What another replica owns, asked of it: owner (a blob streamed from it), tag (a tag or manifest it resolved), tags (a tag list it listed), unreachable (it could not be asked; upstream was), refused (it refused this replica's signature: secrets differ or clocks are apart; upstream was asked).",
		}, []string{"result"}),
		proofs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_upstream_proofs_total",
			Help: "Blobs only private upstreams had served, downloaded and hashed from another upstream before it may serve them: served (the bytes verified) or refused.",
		}, []string{"result"}),
		storeFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_store_failures_total",
			Help: "Verified manifests (what=manifest) and index records (what=index) the store could not keep; their requests were answered anyway.",
		}, []string{"what"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range append(storeGauges(store, remembered), m.requests, m.fetched, m.filled, m.fills, m.waiting, m.passthrough, m.resumed, m.failed, m.storeFailed, m.eager, m.eagerUsed, m.remote, m.peer, m.proofs, m.stale, m.negative, m.evicted, m.evictedBytes, m.oldest) {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// storeGauges read the store's state when scraped.
func storeGauges(store *storage.Store, remembered func() int) []prometheus.Collector {
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_store_bytes",
		Help: "Bytes of blobs in the store.",
	}, func() float64 { b, _ := store.Size(); return float64(b) })
	count := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_store_blobs",
		Help: "Blobs in the store.",
	}, func() float64 { _, n := store.Size(); return float64(n) })
	free := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_store_free_bytes",
		Help: "Free bytes of the filesystem under storage.root.",
	}, func() float64 { f, _ := store.FreeSpace(); return float64(f) })
	short := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_store_short_bytes",
		Help: "Bytes missing to storage.min_free; above 0 nothing new is stored and fills pass through.",
	}, func() float64 { _, s := store.FreeSpace(); return float64(s) })
	readOnly := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_index_read_only",
		Help: "1 while the index is open read-only because the filesystem was full when it opened.",
	}, func() float64 {
		if store.ReadOnly() {
			return 1
		}
		return 0
	})
	negatives := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_negative_entries",
		Help: "Upstream refusals (404, 401, 403) remembered for negative_ttl; bounded at 10,000.",
	}, func() float64 { return float64(remembered()) })
	uploads := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wharf_bucket_uploads_pending",
			Help: "Blobs stored here that the shared bucket still needs: their uploads wait for it to answer.",
		}, func() float64 { return float64(store.Uploads().Pending) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "wharf_bucket_uploads_total",
			Help: "Blobs the shared bucket got from this replica (or was found to have already).",
		}, func() float64 { return float64(store.Uploads().Done) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "wharf_bucket_upload_failures_total",
			Help: "Uploads to the shared bucket that failed; each is tried again, with a pause growing to a minute.",
		}, func() float64 { return float64(store.Uploads().Failures) }),
	}
	index := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wharf_index_lsm_bytes",
			Help: "Bytes of the index's tree (Badger's tables): its small records, kept to their live size by Badger's compactions.",
		}, func() float64 { return float64(store.IndexStats().LSMBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wharf_index_value_log_bytes",
			Help: "Bytes of the index's value log (records of 64 KiB and more), which the index's collection bounds.",
		}, func() float64 { return float64(store.IndexStats().LogBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "wharf_index_gc_reclaimed_bytes_total",
			Help: "Value-log bytes the index's collection (every 10 minutes) freed.",
		}, func() float64 { return float64(store.IndexStats().GCReclaimedBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "wharf_index_gc_rewrites_total",
			Help: "Value-log files the index's collection rewrote.",
		}, func() float64 { return float64(store.IndexStats().GCRewrites) }),
	}
	return append(append([]prometheus.Collector{negatives, size, count, free, short, readOnly}, uploads...), index...)
}

func (m *metrics) result(up, kind string, hit bool) {
	r := "miss"
	if hit {
		r = "hit"
	}
	m.requests.WithLabelValues(up, kind, r).Inc()
}
