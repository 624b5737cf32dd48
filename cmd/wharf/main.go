// Command wharf runs the Wharf pull-through registry mirror.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	_ "net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/server"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage: wharf COMMAND [flags]

  wharf serve --config FILE                          run the mirror
  wharf config (check | print) --config FILE         check a configuration file; print it with every default
  wharf check --config FILE [--repair] [--sample N]  verify the store and its index
  wharf gc --config FILE --keep SIZE [--dry-run]     bound the shared bucket (storage.driver: s3)
  wharf prefetch [client flags] [--push-to TARGET] [--referrers=false] [--index filter] [--platform OS/ARCH]...
                 [--rename FROM=TO]... [--pin] [--wait] [--output json] (-f FILE | REF... | --from-cache PATTERN...)
                                                     warm the cache and copy images to a target
  wharf jobs [client flags] [--cancel | --failed | --retry] [--output json] [ID]
                                                     list prefetch jobs, show, cancel or retry one
  wharf pins [client flags] [--unpin REF] [--output json]
                                                     list what jobs pinned against eviction, or unpin
  wharf targets [client flags] [--output json]       each push target's health: circuit, failures, last error
  wharf replicate [client flags] [--output json] [RULE --now [--wait] | RULE --dry-run]
                                                     show the replication rules, or run one now
  wharf version                                      print the version

client flags: --server URL ($WHARF_SERVER, default http://127.0.0.1:5000),
  --token-file F or --user NAME (password in $WHARF_PASSWORD), --ca-file F.
wharf COMMAND --help shows a command's flags and examples.
Exit status: 0 done, 1 failed (an error, or a job that did not finish), 2 the command line is wrong.
`

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "wharf:", err)
	}
	os.Exit(exitCode(err))
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "wharf", versionString())
		return nil
	case "serve":
		fs := newCommand("serve", stdout, stderr)
		path := fs.String("config", "", "configuration file (YAML)")
		rest, err := fs.parse(args[1:])
		if err != nil {
			return err
		}
		if *path == "" || len(rest) > 0 {
			return usagef("serve", "usage: wharf serve --config FILE")
		}
		cfg, err := loadConfig(*path)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serve(ctx, cfg, stderr)
	case "check":
		return check(args[1:], stdout, stderr, isTerminal(stderr))
	case "config":
		return configCmd(args[1:], stdout, stderr)
	case "gc":
		return gcCmd(args[1:], stdout, stderr)
	case "prefetch":
		return prefetchCmd(args[1:], stdout, stderr, isTerminal(stderr))
	case "jobs":
		return jobsCmd(args[1:], stdout, stderr)
	case "pins":
		return pinsCmd(args[1:], stdout, stderr)
	case "targets":
		return targetsCmd(args[1:], stdout, stderr)
	case "replicate":
		return replicateCmd(args[1:], stdout, stderr, isTerminal(stderr))
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// isTerminal reports whether w is this process's stderr and a terminal:
// progress is drawn in place only there.
func isTerminal(w io.Writer) bool {
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && w == io.Writer(os.Stderr)
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// serve wires the packages together and runs until ctx ends, then shuts
// down gracefully: stop accepting, let responses finish, close the index.
func serve(ctx context.Context, cfg *fileConfig, logOut io.Writer) error {
	log := cfg.logger(logOut)
	stopTracing, err := startTracing(ctx)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopTracing(sctx)
	}()
	auditLog, err := audit.Open(cfg.Audit)
	if err != nil {
		return fmt.Errorf("audit.file: %w", err)
	}
	defer auditLog.Close()
	sopts, err := cfg.Storage.Options()
	if err != nil {
		return err
	}
	store, err := storage.Open(cfg.Storage.Root, sopts)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Warn("store not closed cleanly", "error", err)
		}
	}()
	if store.ReadOnly() {
		log.Warn("the filesystem under storage.root is full: the index is read-only and nothing is stored until there is room", "root", cfg.Storage.Root)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	scfg, closeFleet, err := cfg.server(reg, log)
	if err != nil {
		return err
	}
	scfg.Audit, scfg.Version = auditLog, versionString()
	defer closeFleet()
	srv, err := server.New(store, scfg)
	if err != nil {
		return err
	}
	cfg.logAccess(log)
	return cfg.listenAndServe(ctx, srv, log)
}

// server is the configuration of one Wharf, its upstreams' and targets'
// clients built, and its fleet joined (close leaves it).
func (c *fileConfig) server(reg *prometheus.Registry, log *slog.Logger) (cfg server.Config, close func(), err error) {
	close = func() {}
	ups, routes, status, targets, err := remotes(c, upstream.NewMetrics(reg), log)
	if err != nil {
		return cfg, close, err
	}
	rules, err := c.rules()
	if err != nil {
		return cfg, close, err
	}
	ac := c.accessConfig(log, reg)
	cfg = server.Config{
		Cache: cache.Config{Upstreams: ups, PinPatterns: c.Pins, MaxSize: c.Storage.MaxBytes(), HighWater: c.Storage.HighWatermark,
			LowWater: c.Storage.LowWatermark, Redirect: c.Storage.Redirect, StallTimeout: c.stallTimeout()},
		Upstreams: routes, Status: status, TargetStatus: targetStatus(targets),
		Jobs:  replicate.Config{Targets: targets, JobImages: c.Prefetch.JobImages, JobTransfers: c.Prefetch.JobTransfers, RetryFor: c.retryFor()},
		Rules: rules, Auth: &ac, Registry: reg, Logger: log,
	}
	if c.Cluster == nil {
		return cfg, close, nil
	}
	cc := c.Cluster.Config
	cc.Registerer, cc.Logger = reg, log
	if c.Cluster.TLS.CertFile != "" {
		src, err := newCertSource(c.Cluster.TLS.CertFile, c.Cluster.TLS.KeyFile, c.Cluster.TLS.ClientCAFile)
		if err != nil {
			return cfg, close, fmt.Errorf("cluster.%w", err)
		}
		src.log = log
		cc.TLS = src.peerClientTLS()
	}
	fleet, err := cluster.New(cc)
	if err != nil {
		return cfg, close, err
	}
	cfg.Fleet = fleet
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wharf_cluster_peers",
		Help: "Replicas this one knows in its cluster, itself included.",
	}, func() float64 { return float64(len(fleet.Peers())) })); err != nil {
		fleet.Close()
		return cfg, close, err
	}
	log.Info("cluster", "advertise", c.Cluster.Advertise, "peers", strings.Join(fleet.Peers(), ","))
	return cfg, fleet.Close, nil
}

// servePeers serves the fleet's requests on cluster.listen; stop closes
// the listener once the client listener has drained.
func (c *fileConfig) servePeers(h http.Handler, log *slog.Logger) (stop func(), err error) {
	tlsConf, err := c.Cluster.TLS.serverTLS(log)
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	ln, err := net.Listen("tcp", c.Cluster.Listen)
	if err != nil {
		return nil, fmt.Errorf("cluster.listen: %w", err)
	}
	ps := &http.Server{Handler: onlyPeers(h), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn), TLSConfig: tlsConf}
	go func() {
		if tlsConf != nil {
			ps.ServeTLS(ln, "", "")
			return
		}
		ps.Serve(ln)
	}()
	log.Info("peers listening", "addr", ln.Addr().String(), "tls", tlsConf != nil)
	return func() { ps.Close() }, nil
}

// targetStatus reports each target's health, in name order.
func targetStatus(targets map[string]replicate.Target) []func() any {
	var out []func() any
	for _, name := range slices.Sorted(maps.Keys(targets)) {
		if h, ok := targets[name].(interface{ Health() upstream.Health }); ok {
			out = append(out, func() any { return h.Health() })
		}
	}
	return out
}

// retryFor is each target's retry_for, where it is set.
func (c *fileConfig) retryFor() map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, t := range c.Targets {
		if t.RetryFor != nil {
			out[t.Name] = *t.RetryFor
		}
	}
	return out
}

// listenAndServe serves srv on the configured listener (and the debug
// one) until ctx ends, then shuts down: responses finish within the grace
// period, then the rules, the jobs and the fills stop.
func (c *fileConfig) listenAndServe(ctx context.Context, srv *server.Server, log *slog.Logger) error {
	tlsConf, err := c.TLS.serverTLS(log)
	if err != nil {
		return err
	}
	ln, err := listen(c.Listen, c.Server.MaxConnections, c.Server.MaxConnectionsPerAddress, c.Server.WriteTimeout)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           httpx.TrustProxies(c.Server.proxies, srv.Handler),
		ConnState:         ln.ConnState,
		ReadHeaderTimeout: c.Server.ReadHeaderTimeout,
		IdleTimeout:       c.Server.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConf, // HTTP/2 is offered over TLS
	}
	if c.Cluster != nil && c.Cluster.Listen != "" {
		stop, err := c.servePeers(srv.Handler, log)
		if err != nil {
			return err
		}
		defer stop()
		hs.Handler = noPeers(hs.Handler)
	}
	if c.DebugListen != "" {
		dln, err := net.Listen("tcp", c.DebugListen)
		if err != nil {
			return err
		}
		// net/http/pprof registers on http.DefaultServeMux; only this
		// listener serves that mux.
		dsrv := &http.Server{Handler: http.DefaultServeMux, ReadHeaderTimeout: 10 * time.Second}
		go dsrv.Serve(dln)
		defer dsrv.Close()
		log.Info("debug listening", "addr", dln.Addr().String())
	}
	if err := srv.Start(); err != nil {
		log.Error("prefetch jobs not resumed", "error", err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "tls", tlsConf != nil, "version", versionString(), "root", c.Storage.Root)
	errc := make(chan error, 1)
	go func() {
		if tlsConf != nil {
			errc <- hs.ServeTLS(ln, "", "")
			return
		}
		errc <- hs.Serve(ln)
	}()
	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", c.Server.ShutdownTimeout)
	srv.Drain() // readiness fails, and the peers stop sending work here
	sctx, cancel := context.WithTimeout(context.Background(), c.Server.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
		log.Warn("shutdown grace period ended with requests in flight", "error", err)
	}
	srv.Close(sctx) // fills finish within the grace, then the index closes
	return serveErr
}

// remotes builds a client per upstream and per target: the cache's
// upstreams, how requests name them, their health, and the jobs' push
// targets.
func remotes(cfg *fileConfig, um *upstream.Metrics, log *slog.Logger) (ups []cache.Upstream, routes []route.Upstream, status []func() any, targets map[string]replicate.Target, err error) {
	for _, u := range cfg.Upstreams {
		client, err := u.client(um, false, 0, log)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		ups = append(ups, cache.Upstream{Name: u.Name, Source: client, TagTTL: *u.TagTTL,
			NegativeTTL: *u.NegativeTTL, RevalidateTimeout: u.Revalidate,
			MaxFills: u.maxFills(), FillGrace: u.FillGrace, WaitTimeout: u.WaitTimeout, EagerFill: u.EagerFill == nil || *u.EagerFill,
			Private: u.private()})
		var hosts []string
		if pu, err := url.Parse(u.URL); err == nil && pu.Host != "" {
			hosts = []string{pu.Host} // as skopeo sync files key a registry
		}
		routes = append(routes, route.Upstream{Name: u.Name, Aliases: u.Aliases, Default: u.Default, Hosts: hosts,
			TLSVerify: strings.HasPrefix(u.URL, "https://") && !u.Insecure})
		status = append(status, func() any { return client.Health() })
	}
	targets = map[string]replicate.Target{}
	for _, t := range cfg.Targets {
		client, err := t.client(um, true, t.chunkBytes, log)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("target: %w", err)
		}
		targets[t.Name] = client
	}
	return ups, routes, status, targets, nil
}
