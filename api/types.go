package api

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// The wire contract of /api/v1: every request body and answer, what the
// server writes and `wharf` (the CLI) reads. The JSON names are the
// contract; jobs' records in the index may change without it.

// State is a job's or an image's state.
type State string

// The states.
const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateDone      State = "done"
	StateFailed    State = "failed"    // a job none of whose images made it, or one image
	StatePartial   State = "partial"   // a job some of whose images failed
	StateCancelled State = "cancelled" // by DELETE /api/v1/jobs/{id}
)

// Ended reports whether s is final.
func (s State) Ended() bool {
	return s == StateDone || s == StateFailed || s == StatePartial || s == StateCancelled
}

// MaxImagesPage is the most images GET /api/v1/jobs/{id}/images answers
// at once.
const MaxImagesPage = 1000

// PrefetchRequest is the JSON body of POST /api/v1/prefetch. The text and
// YAML bodies carry the same options as query parameters.
type PrefetchRequest struct {
	Images    []string `json:"images,omitempty"`
	Platforms []string `json:"platforms,omitempty"`
	PushTo    string   `json:"push_to,omitempty"`
	Rename    []Rename `json:"rename,omitempty"`
	Pin       bool     `json:"pin,omitempty"`
	// List and Sync carry a text list or a skopeo sync YAML file inside
	// JSON: what the CLI sends, since a loopback Wharf without credentials
	// takes JSON bodies only.
	List string `json:"list,omitempty"`
	Sync string `json:"sync,omitempty"`
	// Referrers false leaves signatures, attestations and SBOMs behind.
	Referrers *bool `json:"referrers,omitempty"`
	// Index is "verbatim" (the default) or "filter": with platforms, push
	// indexes listing only the copied children.
	Index string `json:"index,omitempty"`
	// FromCache are patterns (as pins use) whose cached tags the job
	// copies: "replicate what we use".
	FromCache []string `json:"from_cache,omitempty"`
}

// Rename maps source repositories to target ones (see
// replicate.TargetRepo: the longest From wins).
type Rename struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Job is a job's record without its images, which are read a page at a
// time: POST /api/v1/prefetch, GET and DELETE /api/v1/jobs/{id}.
type Job struct {
	ID            string     `json:"id"`
	State         State      `json:"state"`
	Error         string     `json:"error,omitempty"` // why the job as a whole failed
	Platforms     []string   `json:"platforms,omitempty"`
	PushTo        string     `json:"push_to,omitempty"`
	Pin           bool       `json:"pin,omitempty"`
	SkipReferrers bool       `json:"skip_referrers,omitempty"`
	FilterIndex   bool       `json:"filter_index,omitempty"`
	Rule          string     `json:"rule,omitempty"`     // the replication rule whose run this is
	RetryOf       string     `json:"retry_of,omitempty"` // the job whose failed images this one runs again
	Owner         string     `json:"owner,omitempty"`    // who submitted it
	Cancel        bool       `json:"cancel_requested,omitempty"`
	Created       time.Time  `json:"created"`
	Started       *time.Time `json:"started,omitempty"`
	Finished      *time.Time `json:"finished,omitempty"`
	Images        int        `json:"images"`
	Queued        int        `json:"images_queued"`
	Running       int        `json:"images_running"`
	Done          int        `json:"images_done"`
	Failed        int        `json:"images_failed"`
	Cancelled     int        `json:"images_cancelled"`
	BytesTotal    int64      `json:"bytes_total"`
	BytesDone     int64      `json:"bytes_done"`
	BytesFetched  int64      `json:"bytes_fetched"`
	BytesPushed   int64      `json:"bytes_pushed"`
}

// Image is one image of a job. Byte counts are of blobs: fetched from
// upstream by this job, already cached, pushed to the target, and done
// out of total (for progress bars).
type Image struct {
	Index        int            `json:"index"` // its place in the job, and the key of its page
	Source       string         `json:"source"`
	Upstream     string         `json:"upstream"`
	Repository   string         `json:"repository"`
	Reference    string         `json:"reference"`
	Tag          string         `json:"tag,omitempty"` // pushed under, when Reference is a digest
	Target       string         `json:"target,omitempty"`
	TargetRepo   string         `json:"target_repository,omitempty"`
	State        State          `json:"state"`
	Digest       digest.Digest  `json:"digest,omitempty"`
	MediaType    string         `json:"media_type,omitempty"`
	NotCopied    []SkippedChild `json:"not_copied,omitempty"`
	BytesTotal   int64          `json:"bytes_total"`
	BytesDone    int64          `json:"bytes_done"`
	BytesFetched int64          `json:"bytes_fetched"`
	BytesCached  int64          `json:"bytes_cached"`
	BytesPushed  int64          `json:"bytes_pushed"`
	BlobsPushed  int            `json:"blobs_pushed"`
	BlobsSkipped int            `json:"blobs_skipped"`
	BlobsMounted int            `json:"blobs_mounted"`
	Referrers    int            `json:"referrers,omitempty"` // signatures, attestations, SBOMs copied with it
	// FilteredDigest is the digest of the index pushed instead of the
	// source's (index: filter), and Note says so in words.
	FilteredDigest digest.Digest `json:"filtered_digest,omitempty"`
	Note           string        `json:"note,omitempty"`
	Started        *time.Time    `json:"started,omitempty"`
	Finished       *time.Time    `json:"finished,omitempty"`
	Seconds        float64       `json:"seconds,omitempty"`
	Error          string        `json:"error,omitempty"`
}

// SkippedChild is a child of an index left out by the platform filter.
type SkippedChild struct {
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform,omitempty"`
}

// JobList answers GET /api/v1/jobs.
type JobList struct {
	Jobs []Job `json:"jobs"`
	// Unreachable names the replicas that did not answer: their jobs are
	// missing from the list.
	Unreachable []string `json:"unreachable,omitempty"`
}

// ImagePage answers GET /api/v1/jobs/{id}/images, with a Link header to
// the next page while more follow.
type ImagePage struct {
	Images []Image `json:"images"`
}

// Pin is what a job pinned against eviction.
type Pin struct {
	Upstream   string        `json:"upstream"`
	Repository string        `json:"repository"`
	Reference  string        `json:"reference"`
	Digest     digest.Digest `json:"digest"`
}

// PinList answers GET /api/v1/pins.
type PinList struct {
	Pins []Pin `json:"pins"`
}

// Rule is what GET /api/v1/replication says of a replication rule.
type Rule struct {
	Name       string     `json:"name"`
	Target     string     `json:"target"`
	Triggers   []string   `json:"triggers"`
	LastRun    *Run       `json:"last_run,omitempty"`
	LastRuns   []Run      `json:"last_runs,omitempty"` // each trigger's last run, by trigger
	NextRun    *time.Time `json:"next_run,omitempty"`
	Pending    int        `json:"pending"`
	LagSeconds float64    `json:"lag_seconds"` // since the oldest pending tag was seen
	Runs       int        `json:"runs"`
	Failures   int        `json:"failures"`          // runs that could not start, and images that failed
	Replica    string     `json:"replica,omitempty"` // in a fleet, the replica that runs it
}

// Run is one run of a rule: its job, if it had anything to do.
type Run struct {
	Trigger string    `json:"trigger"` // on_pull, schedule, manual, takeover
	At      time.Time `json:"at"`
	Job     string    `json:"job,omitempty"`
	State   string    `json:"state"` // the job's, or "nothing new", or "failed to start"
	Images  int       `json:"images"`
	Error   string    `json:"error,omitempty"`
}

// RuleList answers GET /api/v1/replication.
type RuleList struct {
	Rules []Rule `json:"rules"`
	// Unreachable names the replicas that own rules and did not answer:
	// those rules' status is this replica's, not their owner's.
	Unreachable []string `json:"unreachable,omitempty"`
}

// RuleRun answers POST /api/v1/replication/{rule}/run: 202 with the job
// started, or 200 with State "nothing new". Problems names what could not
// be listed, for callers with the jobs right.
type RuleRun struct {
	Rule     string `json:"rule"`
	Job      *Job   `json:"job,omitempty"`
	State    string `json:"state,omitempty"`
	Problems string `json:"problems,omitempty"`
	// WouldPush is, for ?dry_run=true, what a run would push and why
	// (new, moved, referrers), pushing nothing.
	WouldPush []Planned `json:"would_push,omitempty"`
}

// Planned is a tag a run of a rule would push: why is new (never pushed),
// moved (pushed as another digest) or referrers (signed, attested or given
// an SBOM since).
type Planned struct {
	Source string        `json:"source"`
	Target string        `json:"target"`
	Digest digest.Digest `json:"digest"`
	Why    string        `json:"why"`
}

// UpstreamList answers GET /api/v1/upstreams: each upstream's health as
// its client reports it.
type UpstreamList struct {
	Upstreams []any `json:"upstreams"`
}

// TargetList is GET /api/v1/targets: each push target's health, as
// UpstreamList's entries.
type TargetList struct {
	Targets []any `json:"targets"`
}
