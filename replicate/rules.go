package replicate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/robfig/cron/v3"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/route"
)

// Replication rules keep a target in step with part of what Wharf serves.
// A rule's runs are ordinary jobs tagged with its name; what a rule pushed
// is remembered per tag in the index, so that only what is new or moved
// goes again. Triggers: a tag first cached or seen to move (on_pull,
// batched), a schedule (list the tags upstream), and by hand.

// Rule is one replication rule.
type Rule struct {
	Name      string
	Sources   []string          // patterns (route.Match) on "<upstream>/<repo>"
	Tags      func(string) bool // nil: every tag
	Target    string
	Rename    []Rename
	Platforms []Platform
	// SkipReferrers leaves signatures and attestations behind; FilterIndex
	// pushes indexes listing only Platforms.
	SkipReferrers, FilterIndex bool
	OnPull                     bool
	Schedule                   string // "@every 10m" or a cron expression; "" for none
}

// RuleStatus is what GET /api/v1/replication says of a rule.
type RuleStatus struct {
	Name       string     `json:"name"`
	Target     string     `json:"target"`
	Triggers   []string   `json:"triggers"`
	LastRun    *RunInfo   `json:"last_run,omitempty"`
	LastRuns   []RunInfo  `json:"last_runs,omitempty"` // each trigger's last, by trigger
	NextRun    *time.Time `json:"next_run,omitempty"`
	Pending    int        `json:"pending"`
	LagSeconds float64    `json:"lag_seconds"` // since the oldest pending tag was seen
	Runs       int        `json:"runs"`
	Failures   int        `json:"failures"` // runs that could not start, and images that failed
}

// RunInfo is one run of a rule: its job, if it had anything to do.
type RunInfo struct {
	Trigger string    `json:"trigger"` // on_pull, schedule, manual, takeover (a fleet replica taking the rule over)
	At      time.Time `json:"at"`
	Job     string    `json:"job,omitempty"`
	State   string    `json:"state"` // the job's, or "nothing new", or "failed to start"
	Images  int       `json:"images"`
	Error   string    `json:"error,omitempty"`
}

// maxInflight bounds the tags a rule remembers as being pushed.
const maxInflight = 100_000

// onPullBatch is how long on_pull waits for more tags before a run: the
// pulls of one rollout make one job, not one per tag.
const onPullBatch = 3 * time.Second

// ErrNoRule says no rule has the name asked for.
var ErrNoRule = errors.New("no such replication rule")

// Owners decides which replica of a fleet runs each rule: only that one
// runs its schedule and its on_pull jobs, so a rule makes one job per tick
// and pushes each tag once, whichever replica saw the pull.
type Owners interface {
	// RuleOwner is the replica that runs rule name, and whether it is this
	// one.
	RuleOwner(name string) (peer string, self bool)
	// HandPending gives on_pull tags of rule to peer, its owner.
	HandPending(ctx context.Context, peer, rule string, tags []Pending) error
}

// Pending is an on_pull tag on its way to its rule's owner.
type Pending struct {
	Upstream   string        `json:"upstream"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"`
	Since      time.Time     `json:"since"`
	// Referrers is the print of what refers to it now, when the tag had
	// not moved but that had changed (see Jobs.referrerPrint).
	Referrers *string `json:"referrers,omitempty"`
}

// Rules runs the replication rules over a job runner.
type Rules struct {
	jobs   *Jobs
	rules  []*rule
	batch  time.Duration
	stop   chan struct{}
	owners Owners             // nil: this replica runs every rule
	checks chan referrerCheck // pushed tags looked at again, for new referrers

	mu     sync.Mutex // guards closed and every wg.Add
	closed bool
	wg     sync.WaitGroup
}

// goAdd counts a goroutine about to start, unless Close has begun.
func (rs *Rules) goAdd() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return false
	}
	rs.wg.Add(1)
	return true
}

type rule struct {
	Rule
	sched cron.Schedule // nil without a schedule
	runMu sync.Mutex    // one listing run at a time: by hand and by schedule

	mu       sync.Mutex
	pending  map[string]pendingTag // "<up>/<repo>:<tag>"
	inflight map[string]inflight   // tags of this rule's jobs, until those end
	armed    bool                  // a flush is due
	last     *RunInfo
	lasts    map[string]RunInfo // the last run of each trigger
	next     time.Time
	runs     int
	failures int
}

// inflight is a tag some job of the rule is pushing.
type inflight struct {
	dgst digest.Digest
	job  string
}

type pendingTag struct {
	up, repo, tag string
	dgst          digest.Digest
	since         time.Time
	referrers     *string // the print of its referrers now, when looked at (see Jobs.referrerPrint)
	why           string  // a run's reason to push it: new, moved, referrers
}

// NewRules checks rules against the jobs' targets. batch is the on_pull
// window (0: 3s).
func NewRules(jobs *Jobs, rules []Rule, batch time.Duration) (*Rules, error) {
	rs := &Rules{jobs: jobs, batch: cmp.Or(batch, onPullBatch), stop: make(chan struct{}), checks: make(chan referrerCheck, 1024)}
	seen := map[string]bool{}
	for _, r := range rules {
		switch {
		case r.Name == "" || strings.ContainsAny(r.Name, "/ \x00"):
			return nil, fmt.Errorf("replication rule %q: a name without / or spaces is required", r.Name)
		case seen[r.Name]:
			return nil, fmt.Errorf("replication rule %s is configured twice", r.Name)
		case !jobs.HasTarget(r.Target):
			return nil, fmt.Errorf("replication rule %s: no target %q is configured (targets: %s)", r.Name, r.Target, listOrNone(jobs.targetNames()))
		case len(r.Sources) == 0:
			return nil, fmt.Errorf("replication rule %s: sources is empty", r.Name)
		}
		seen[r.Name] = true
		ups := jobs.cache.UpstreamNames()
		for _, s := range r.Sources {
			if err := route.Check(s); err != nil {
				return nil, fmt.Errorf("replication rule %s: sources: %w", r.Name, err)
			}
			if !slices.ContainsFunc(ups, func(u string) bool { return route.MayMatchUpstream(s, u) }) {
				return nil, fmt.Errorf("replication rule %s: source %q names no configured upstream (a source is <upstream>/<repository>, the upstream by its name; upstreams: %s)", r.Name, s, listOrNone(ups))
			}
		}
		st := &rule{Rule: r, pending: map[string]pendingTag{}, inflight: map[string]inflight{}, lasts: map[string]RunInfo{}}
		saved, err := jobs.store.RuleRuns(r.Name)
		if err != nil {
			return nil, fmt.Errorf("replication rule %s: its last runs: %w", r.Name, err)
		}
		for trigger, doc := range saved {
			var run RunInfo
			if json.Unmarshal(doc, &run) != nil || run.Trigger != trigger {
				continue
			}
			st.lasts[trigger] = run
			if st.last == nil || run.At.After(st.last.At) {
				last := run
				st.last = &last
			}
		}
		if r.Schedule != "" {
			sched, err := cron.ParseStandard(r.Schedule)
			if err != nil {
				return nil, fmt.Errorf("replication rule %s: schedule %q: want @every 10m, @hourly or a cron expression: %v", r.Name, r.Schedule, err)
			}
			st.sched = sched
		}
		rs.rules = append(rs.rules, st)
	}
	if jobs.reg != nil && len(rs.rules) > 0 {
		if err := jobs.reg.Register(rulesCollector{rs}); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// SetOwners makes the rules a fleet's: call it before Start.
func (rs *Rules) SetOwners(o Owners) { rs.owners = o }

// owner is the replica that runs r, "" when it is this one.
func (rs *Rules) owner(r *rule) string {
	if rs.owners == nil {
		return ""
	}
	peer, self := rs.owners.RuleOwner(r.Name)
	if self {
		return ""
	}
	return peer
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// Start subscribes on_pull rules to the cache's tag events and starts the
// schedules. Close stops them.
func (rs *Rules) Start() {
	rs.jobs.cache.Subscribe(rs.onTag)
	for _, r := range rs.rules {
		if r.OnPull {
			rs.restore(r)
		}
	}
	for _, r := range rs.rules {
		if r.sched != nil && rs.goAdd() {
			go rs.schedule(r)
		}
	}
	if rs.owners != nil && rs.goAdd() {
		go rs.watchOwners()
	}
	if rs.goAdd() {
		go rs.checkReferrers()
	}
	if rs.goAdd() {
		go rs.checkTargets()
	}
}

// checkTargets asks each rule's target, once at start, whether Wharf may
// push where the rule pushes (reachable, credentials accepted, push scope
// obtainable), pushing nothing, and logs what to do about a refusal; the
// rule runs all the same, and its pushes wait out a target that is down.
func (rs *Rules) checkTargets() {
	defer rs.wg.Done()
	for _, r := range rs.rules {
		t, ok := rs.jobs.targets[r.Target].(interface {
			CheckPush(ctx context.Context, repo string) error
		})
		if !ok {
			continue
		}
		repo := checkRepo(r.Rule)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := t.CheckPush(ctx, repo)
		cancel()
		select {
		case <-rs.stop:
			return
		default:
		}
		if err != nil {
			rs.jobs.log.Warn("a replication rule's target does not take pushes; its runs will fail until this is fixed", "rule", r.Name, "target", r.Target,
				"repository", repo, "error", explain(err, r.Target, repo, ""))
			continue
		}
		rs.jobs.log.Info("a replication rule's target takes pushes", "rule", r.Name, "target", r.Target, "repository", repo)
	}
}

// checkRepo is a repository r pushes to, for checkTargets: its first
// source's, renamed, with the part a pattern leaves open as wharf-check
// (registries grant push rights by project, the first part).
func checkRepo(r Rule) string {
	src := r.Sources[0]
	if i := strings.IndexAny(src, "*?["); i >= 0 {
		src = src[:strings.LastIndexByte(src[:i], '/')+1] + "wharf-check"
	}
	up, repo, _ := strings.Cut(src, "/")
	if repo == "" || strings.ContainsAny(up, "*?[") {
		return "wharf-check/wharf-check"
	}
	return TargetRepo(r.Rename, up, repo, "")
}

// ownersEvery is how often a fleet's replica looks at which rules it owns.
const ownersEvery = 2 * time.Second

// watchOwners catches up on the on_pull rules without a schedule that
// this replica comes to own (at start, or when their owner goes): the
// tags the last owner held pending died with it, so a run lists what is
// new upstream, as a schedule would. What the target already holds costs
// a HEAD.
func (rs *Rules) watchOwners() {
	defer rs.wg.Done()
	owned := map[string]bool{}
	t := time.NewTicker(ownersEvery)
	defer t.Stop()
	for {
		select {
		case <-rs.stop:
			return
		case <-t.C:
		}
		for _, r := range rs.rules {
			mine := rs.owner(r) == ""
			if mine && !owned[r.Name] && r.OnPull && r.sched == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				if _, err := rs.scan(ctx, r, "takeover"); err != nil {
					rs.jobs.log.Warn("replication run on taking a rule over failed", "rule", r.Name, "error", err)
				}
				cancel()
			}
			owned[r.Name] = mine
		}
	}
}

// Close stops the schedules and the batching; pending on_pull tags stay
// saved, for the next start.
func (rs *Rules) Close() {
	rs.mu.Lock()
	if !rs.closed {
		rs.closed = true
		close(rs.stop)
	}
	rs.mu.Unlock()
	rs.wg.Wait()
}

func (rs *Rules) schedule(r *rule) {
	defer rs.wg.Done()
	for {
		next := r.sched.Next(time.Now()) // the wall clock: a schedule is about real time
		r.mu.Lock()
		r.next = next
		r.mu.Unlock()
		t := time.NewTimer(time.Until(next))
		select {
		case <-rs.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if rs.owner(r) != "" {
			continue // another replica runs it
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		if _, err := rs.scan(ctx, r, "schedule"); err != nil {
			rs.jobs.log.Warn("replication run failed", "rule", r.Name, "error", err)
		}
		cancel()
	}
}

// matches reports whether a tag of up/repo falls under r. The tags that
// only carry what refers to an image (cosign's sha256-<hex>.sig, .att,
// .sbom and the referrers tag schema's sha256-<hex>) never do: they go
// with their image, as its referrers.
func (r *rule) matches(up, repo, tag string) bool {
	name := up + "/" + repo
	return !referrerTag(tag) && slices.ContainsFunc(r.Sources, func(p string) bool { return route.Match(p, name) }) && (r.Tags == nil || r.Tags(tag))
}

// referrerTag reports a tag of the referrers tag schema or of cosign.
func referrerTag(tag string) bool {
	for _, suffix := range append([]string{""}, cosignSuffixes...) {
		if hex, ok := strings.CutPrefix(strings.TrimSuffix(tag, suffix), "sha256-"); ok && len(tag) == len("sha256-")+64+len(suffix) && strings.HasSuffix(tag, suffix) {
			if _, err := digest.Parse("sha256:" + hex); err == nil {
				return true
			}
		}
	}
	return false
}

// onTag queues a new or moved tag for the on_pull rules it falls under;
// one looked at again that a rule pushed already is checked (in the
// background: this runs in a pull's path) for referrers added since.
func (rs *Rules) onTag(ev cache.TagEvent) {
	for _, r := range rs.rules {
		if !r.OnPull || !r.matches(ev.Upstream, ev.Repo, ev.Tag) {
			continue
		}
		p := pendingTag{up: ev.Upstream, repo: ev.Repo, tag: ev.Tag, dgst: ev.Digest, since: rs.jobs.now()}
		if !ev.Same {
			rs.queue(r, p)
			continue
		}
		if r.SkipReferrers {
			continue // its referrers stay behind
		}
		if d, _ := rs.jobs.store.Replicated(r.Name, p.up, p.repo, p.tag); d != p.dgst && rs.owner(r) == "" {
			continue // not pushed yet: a pending batch takes it
		}
		// Pushed here, or by the rule's owner elsewhere in the fleet,
		// which compares the print with its own record.
		select {
		case rs.checks <- referrerCheck{r, p}:
		default: // a burst of revalidations: the schedule, or the next one, looks
		}
	}
}

// referrerCheck is a pushed tag to look at for new referrers.
type referrerCheck struct {
	r *rule
	p pendingTag
}

// checkReferrers queues the tags whose referrers changed since their
// rule pushed them: a signature, an attestation or an SBOM added after
// the image.
func (rs *Rules) checkReferrers() {
	defer rs.wg.Done()
	for {
		select {
		case <-rs.stop:
			return
		case c := <-rs.checks:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			now, err := rs.jobs.referrerPrint(ctx, c.p.up, c.p.repo, c.p.dgst)
			cancel()
			if err != nil {
				rs.jobs.log.Warn("referrers of a replicated tag not looked at", "rule", c.r.Name, "tag", c.p.up+"/"+c.p.repo+":"+c.p.tag, "error", err)
				continue
			}
			c.p.referrers = &now
			rs.queue(c.r, c.p)
		}
	}
}

// AddPending takes on_pull tags another replica saw for rule name, which
// this one owns: they join its batch, once each however many replicas saw
// them.
func (rs *Rules) AddPending(name string, tags []Pending) error {
	for _, r := range rs.rules {
		if r.Name != name {
			continue
		}
		if !r.OnPull {
			return fmt.Errorf("replication rule %s has no on_pull trigger", name)
		}
		for _, t := range tags {
			if t.Digest.Validate() != nil || !r.matches(t.Upstream, t.Repository, t.Tag) {
				return fmt.Errorf("replication rule %s does not take %s/%s:%s@%s", name, t.Upstream, t.Repository, t.Tag, t.Digest)
			}
		}
		for _, t := range tags {
			rs.queue(r, pendingTag{up: t.Upstream, repo: t.Repository, tag: t.Tag, dgst: t.Digest, since: t.Since, referrers: t.Referrers})
		}
		return nil
	}
	return fmt.Errorf("%w %q", ErrNoRule, name)
}

// queue adds p to r's batch unless r pushed it already (with the
// referrers it has now, when p.referrers is set) or is pushing it.
func (rs *Rules) queue(r *rule, p pendingTag) {
	if d, refs := rs.jobs.store.Replicated(r.Name, p.up, p.repo, p.tag); d == p.dgst && (p.referrers == nil || *p.referrers == refs) {
		return
	}
	k := p.up + "/" + p.repo + ":" + p.tag
	if rs.pushing(r, k, p.dgst) {
		return
	}
	r.mu.Lock()
	if old, ok := r.pending[k]; ok && old.since.Before(p.since) {
		p.since = old.since
	}
	r.pending[k] = p
	arm := !r.armed
	r.armed = true
	r.mu.Unlock()
	rs.persist(r, p)
	if arm && rs.goAdd() {
		go rs.flushLater(r)
	}
}

// persist keeps p in the index while it is pending: a crash loses no
// on_pull tag (see restore).
func (rs *Rules) persist(r *rule, p pendingTag) {
	doc, err := json.Marshal(Pending{Upstream: p.up, Repository: p.repo, Tag: p.tag, Digest: p.dgst, Since: p.since, Referrers: p.referrers})
	if err == nil {
		err = rs.jobs.store.PutRulePending(r.Name, p.up+"/"+p.repo+":"+p.tag, doc)
	}
	if err != nil {
		rs.jobs.log.Warn("a pending on_pull tag is not saved: a crash before its run loses it", "rule", r.Name, "tag", p.up+"/"+p.repo+":"+p.tag, "error", err)
	}
}

// taken forgets the saved pending tags of batch that a job (or the rule's
// owner) took, unless they were queued again since.
func (rs *Rules) taken(r *rule, batch []pendingTag) {
	for _, p := range batch {
		k := p.up + "/" + p.repo + ":" + p.tag
		r.mu.Lock()
		_, again := r.pending[k]
		r.mu.Unlock()
		if !again {
			rs.jobs.store.DeleteRulePending(r.Name, k)
		}
	}
}

// restore takes back the pending on_pull tags a crash or a stop left.
func (rs *Rules) restore(r *rule) {
	saved, err := rs.jobs.store.RulePending(r.Name)
	if err != nil {
		rs.jobs.log.Warn("saved pending on_pull tags not read", "rule", r.Name, "error", err)
		return
	}
	for k, doc := range saved {
		rs.jobs.store.DeleteRulePending(r.Name, k) // queue saves it again if it is still to push
		var t Pending
		if json.Unmarshal(doc, &t) != nil || t.Digest.Validate() != nil || !r.matches(t.Upstream, t.Repository, t.Tag) {
			continue // a rule changed since, or a record that cannot be read
		}
		rs.queue(r, pendingTag{up: t.Upstream, repo: t.Repository, tag: t.Tag, dgst: t.Digest, since: t.Since, referrers: t.Referrers})
	}
}

// pushing reports whether a job of r is pushing dgst for key now: a second
// event for it (concurrent pulls, a late revalidation) waits for that job.
func (rs *Rules) pushing(r *rule, key string, dgst digest.Digest) bool {
	r.mu.Lock()
	in, ok := r.inflight[key]
	r.mu.Unlock()
	if !ok || in.dgst != dgst {
		return false
	}
	if job, err := rs.jobs.Job(in.job); err == nil && (job.State == StateQueued || job.State == StateRunning) {
		return true
	}
	r.mu.Lock()
	delete(r.inflight, key)
	r.mu.Unlock()
	return false
}

// flushLater runs r's pending tags once the batch window has passed.
func (rs *Rules) flushLater(r *rule) {
	defer rs.wg.Done()
	t := time.NewTimer(rs.batch)
	select {
	case <-rs.stop:
		t.Stop()
		return
	case <-t.C:
	}
	r.mu.Lock()
	r.armed = false
	batch := make([]pendingTag, 0, len(r.pending))
	for _, p := range r.pending {
		batch = append(batch, p)
	}
	r.pending = map[string]pendingTag{}
	r.mu.Unlock()
	if peer := rs.owner(r); peer != "" {
		if err := rs.hand(peer, r, batch); err != nil {
			rs.keep(r, batch, true)
			rs.jobs.log.Warn("the owner of a replication rule did not take its pending tags; they stay pending here", "rule", r.Name, "owner", peer, "tags", len(batch), "error", err)
			return
		}
		rs.taken(r, batch)
		return
	}
	if _, err := rs.submit(r, "on_pull", batch); err != nil {
		// Nothing is dropped: the tags stay pending (the status shows them
		// and their lag) for the next pull, schedule or manual run.
		rs.keep(r, batch, false)
		rs.jobs.log.Warn("replication run failed; its tags stay pending", "rule", r.Name, "tags", len(batch), "error", err)
		return
	}
	rs.taken(r, batch)
}

// hand gives batch to r's owner.
func (rs *Rules) hand(peer string, r *rule, batch []pendingTag) error {
	tags := make([]Pending, len(batch))
	for i, p := range batch {
		tags[i] = Pending{Upstream: p.up, Repository: p.repo, Tag: p.tag, Digest: p.dgst, Since: p.since, Referrers: p.referrers}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return rs.owners.HandPending(ctx, peer, r.Name, tags)
}

// keep puts batch back in r's pending tags (those not seen again since),
// and with again tries them once more after the batch window: an owner
// that did not answer is soon replaced, by this replica or another.
func (rs *Rules) keep(r *rule, batch []pendingTag, again bool) {
	r.mu.Lock()
	for _, p := range batch {
		k := p.up + "/" + p.repo + ":" + p.tag
		if _, newer := r.pending[k]; !newer {
			r.pending[k] = p
		}
	}
	arm := again && !r.armed
	r.armed = r.armed || arm
	r.mu.Unlock()
	if arm && rs.goAdd() {
		go rs.flushLater(r)
	}
}

// Run starts a run of rule name by hand: what is new or moved upstream.
// A nil job with no error means nothing was.
func (rs *Rules) Run(ctx context.Context, name string) (*Job, error) {
	for _, r := range rs.rules {
		if r.Name == name {
			return rs.scan(ctx, r, "manual")
		}
	}
	return nil, fmt.Errorf("%w %q", ErrNoRule, name)
}

// scan submits a job of what plan finds.
func (rs *Rules) scan(ctx context.Context, r *rule, trigger string) (*Job, error) {
	r.runMu.Lock()
	defer r.runMu.Unlock()
	batch, problems, err := rs.plan(ctx, r)
	if err != nil {
		return nil, err
	}
	// What this run takes is no longer pending for on_pull.
	r.mu.Lock()
	for _, p := range batch {
		delete(r.pending, p.up+"/"+p.repo+":"+p.tag)
	}
	r.mu.Unlock()
	job, err := rs.submit(r, trigger, batch)
	if err == nil {
		rs.taken(r, batch)
	}
	if err == nil && len(problems) > 0 {
		err = errors.Join(problems...)
	}
	return job, err
}

// Planned is a tag a run of a rule would push, and why: new (never
// pushed), moved (pushed as another digest) or referrers (signed,
// attested or given an SBOM since).
type Planned struct {
	Source string        `json:"source"`
	Target string        `json:"target"`
	Digest digest.Digest `json:"digest"`
	Why    string        `json:"why"`
}

// DryRun is what a run of rule name by hand would push now, pushing
// nothing; problems are the repositories and tags it could not look at.
func (rs *Rules) DryRun(ctx context.Context, name string) (plan []Planned, problems error, err error) {
	for _, r := range rs.rules {
		if r.Name != name {
			continue
		}
		batch, ps, err := rs.plan(ctx, r)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range batch {
			plan = append(plan, Planned{Source: p.up + "/" + p.repo + ":" + p.tag, Target: r.Target + "/" + TargetRepo(r.Rename, p.up, p.repo, "") + ":" + p.tag,
				Digest: p.dgst, Why: p.why})
		}
		return plan, errors.Join(ps...), nil
	}
	return nil, nil, fmt.Errorf("%w %q", ErrNoRule, name)
}

// plan lists the tags of every repository r covers (those the fleet knows
// of, and sources naming one repository), resolves those its filter
// takes, and returns the new, moved and newly signed ones.
func (rs *Rules) plan(ctx context.Context, r *rule) (batch []pendingTag, problems []error, err error) {
	c := rs.jobs.cache
	repos := map[[2]string]bool{}
	known, missing, err := c.FleetRepositories(ctx) // the fleet's: the last owner's too
	if err != nil {
		return nil, nil, err
	}
	if len(missing) > 0 {
		rs.jobs.log.Warn("replication run without the repositories of replicas that did not answer", "rule", r.Name, "replicas", missing)
	}
	for _, k := range known {
		if slices.ContainsFunc(r.Sources, func(p string) bool { return route.Match(p, k.Upstream+"/"+k.Name) }) {
			repos[[2]string{k.Upstream, k.Name}] = true
		}
	}
	for _, s := range r.Sources {
		if up, repo, ok := strings.Cut(s, "/"); ok && !strings.ContainsAny(s, "*?[") && c.HasUpstream(up) {
			repos[[2]string{up, repo}] = true
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(repos), func(a, b [2]string) int { return cmp.Or(strings.Compare(a[0], b[0]), strings.Compare(a[1], b[1])) }) {
		tags, err := c.TagsWithin(ctx, k[0], k[1], 0)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s/%s: %w", k[0], k[1], err))
			continue
		}
		for _, tag := range tags {
			if !r.matches(k[0], k[1], tag) {
				continue
			}
			desc, err := c.ManifestHead(ctx, k[0], k[1], tag)
			if err != nil {
				problems = append(problems, fmt.Errorf("%s/%s:%s: %w", k[0], k[1], tag, err))
				continue
			}
			key := k[0] + "/" + k[1] + ":" + tag
			if rs.pushing(r, key, desc.Digest) {
				continue
			}
			why := "new"
			if d, refs := rs.jobs.store.Replicated(r.Name, k[0], k[1], tag); d == desc.Digest {
				// On the target already: again only if it was signed (or
				// attested) since.
				if r.SkipReferrers {
					continue
				}
				now, err := rs.jobs.referrerPrint(ctx, k[0], k[1], desc.Digest)
				if err != nil {
					problems = append(problems, fmt.Errorf("%s/%s:%s: referrers: %w", k[0], k[1], tag, err))
					continue
				}
				if now == refs {
					continue
				}
				why = "referrers"
			} else if d != "" {
				why = "moved"
			}
			batch = append(batch, pendingTag{up: k[0], repo: k[1], tag: tag, dgst: desc.Digest, why: why})
		}
	}
	return batch, problems, nil
}

// submit starts a job of batch for r and records the run.
func (rs *Rules) submit(r *rule, trigger string, batch []pendingTag) (*Job, error) {
	run := &RunInfo{Trigger: trigger, At: rs.jobs.now().UTC(), Images: len(batch), State: "nothing new"}
	defer func() {
		r.mu.Lock()
		r.last, r.runs = run, r.runs+1
		r.lasts[run.Trigger] = *run
		if run.Error != "" {
			r.failures++
		}
		r.mu.Unlock()
		if doc, err := json.Marshal(run); err == nil {
			if err := rs.jobs.store.PutRuleRun(r.Name, run.Trigger, doc); err != nil {
				rs.jobs.log.Warn("a rule's run not recorded", "rule", r.Name, "trigger", run.Trigger, "error", err)
			}
		}
	}()
	if len(batch) == 0 {
		return nil, nil
	}
	slices.SortFunc(batch, func(a, b pendingTag) int {
		return cmp.Or(strings.Compare(a.up, b.up), strings.Compare(a.repo, b.repo), strings.Compare(a.tag, b.tag))
	})
	spec := JobSpec{PushTo: r.Target, Platforms: r.Platforms, SkipReferrers: r.SkipReferrers, FilterIndex: r.FilterIndex, Rule: r.Name}
	for _, p := range batch {
		spec.Images = append(spec.Images, ImageRef{Source: p.up + "/" + p.repo + ":" + p.tag, Upstream: p.up, Repo: p.repo,
			Ref: p.dgst.String(), Tag: p.tag, TargetRepo: TargetRepo(r.Rename, p.up, p.repo, "")})
	}
	job, err := rs.jobs.Submit(spec)
	if err != nil {
		run.State, run.Error = "failed to start", err.Error()
		return nil, err
	}
	run.Job, run.State = job.ID, string(job.State)
	r.mu.Lock()
	if len(r.inflight) > maxInflight {
		r.inflight = map[string]inflight{} // forgotten: at worst a tag goes twice
	}
	for _, p := range batch {
		r.inflight[p.up+"/"+p.repo+":"+p.tag] = inflight{dgst: p.dgst, job: job.ID}
	}
	r.mu.Unlock()
	return &job, nil
}
