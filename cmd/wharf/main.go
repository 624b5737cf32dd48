// Command wharf runs the Wharf pull-through registry mirror.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/proxy"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage:
  wharf serve --config FILE                          run the mirror
  wharf check --config FILE [--repair] [--sample N]  verify the store and its index
  wharf gc --config FILE --keep SIZE [--dry-run]     bound the shared bucket (storage.driver: s3)
  wharf prefetch [--server URL] [--token-file F | --user NAME] [--ca-file F] [--push-to TARGET] [--referrers=false] [--index filter] [--platform OS/ARCH]...
                 [--rename FROM=TO]... [--pin] [--wait] [--output json] (-f FILE | REF... | --from-cache PATTERN...)
                                                     warm the cache and copy images to a target
  wharf jobs [--server URL] [--token-file F | --user NAME] [--ca-file F] [--cancel] [--output json] [ID]
                                                     list prefetch jobs, show or cancel one
  wharf pins [--server URL] [--token-file F | --user NAME] [--ca-file F] [--unpin REF]
                                                     list what jobs pinned against eviction, or unpin
  wharf replicate [--server URL] [--token-file F | --user NAME] [--ca-file F] [RULE --now [--wait]]
                                                     show the replication rules, or run one now
  wharf version                                      print the version
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "wharf:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "wharf", versionString())
		return nil
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "", "configuration file (YAML)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *path == "" || fs.NArg() > 0 {
			return errors.New("usage: wharf serve --config FILE")
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
	case "gc":
		return gcCmd(args[1:], stdout, stderr)
	case "prefetch":
		return prefetchCmd(args[1:], stdout, stderr, isTerminal(stderr))
	case "jobs":
		return jobsCmd(args[1:], stdout, stderr)
	case "pins":
		return pinsCmd(args[1:], stdout, stderr)
	case "replicate":
		return replicateCmd(args[1:], stdout, stderr, isTerminal(stderr))
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
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
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))

	sopts, err := cfg.Storage.options()
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
	ups, routes, targets, err := remotes(cfg, upstream.NewMetrics(reg), log)
	if err != nil {
		return err
	}
	ccfg := cache.Config{Upstreams: ups, Registerer: reg, Logger: log, Pins: cfg.Pins,
		MaxSize: cfg.Storage.maxBytes, HighWater: cfg.Storage.HighWatermark, LowWater: cfg.Storage.LowWatermark, Redirect: cfg.Storage.Redirect}
	ccfg.StallTimeout = cfg.stallTimeout()
	var peerAuth proxy.PeerAuth
	if cfg.Cluster != nil {
		fleet, err := cfg.Cluster.open()
		if err != nil {
			return err
		}
		defer fleet.Close()
		ccfg.Peers, peerAuth = fleet, fleet.Authorized
		if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wharf_cluster_peers",
			Help: "Replicas this one knows in its cluster, itself included.",
		}, func() float64 { return float64(len(fleet.Peers())) })); err != nil {
			return err
		}
		log.Info("cluster", "advertise", cfg.Cluster.Advertise, "peers", strings.Join(fleet.Peers(), ","))
	}
	c, err := cache.New(store, ccfg)
	if err != nil {
		return err
	}
	jobs, err := replicate.New(c, store, replicate.Config{Targets: targets, JobImages: cfg.Prefetch.Concurrency,
		JobTransfers: cfg.Prefetch.Transfers, Registerer: reg, Logger: log})
	if err != nil {
		return err
	}
	ruleList, err := cfg.rules()
	if err != nil {
		return err
	}
	rules, err := replicate.NewRules(jobs, ruleList, 0)
	if err != nil {
		return err
	}
	access, err := auth.New(cfg.accessConfig(log, reg))
	if err != nil {
		return err
	}
	cfg.logAccess(log)
	h, err := proxy.New(c, proxy.Config{Routes: routes, Logger: log, Registry: reg, Auth: access, Jobs: jobs, Rules: rules, PeerAuth: peerAuth})
	if err != nil {
		return err
	}
	tlsConf, err := cfg.TLS.serverTLS(log)
	if err != nil {
		return err
	}

	ln, err := listen(cfg.Listen, cfg.Server.MaxConnections, cfg.Server.MaxConnectionsPerAddress, cfg.Server.WriteTimeout)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ConnState:         ln.ConnState,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConf, // HTTP/2 is offered over TLS
	}
	if cfg.DebugListen != "" {
		dln, err := net.Listen("tcp", cfg.DebugListen)
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
	// Interrupted prefetch jobs go on; resumed before the first request,
	// so that nobody sees a resumed job as anything but running.
	if err := jobs.Resume(); err != nil {
		log.Error("prefetch jobs not resumed", "error", err)
	}
	rules.Start()
	log.Info("listening", "addr", ln.Addr().String(), "tls", tlsConf != nil, "version", versionString(), "root", cfg.Storage.Root)
	errc := make(chan error, 1)
	go func() {
		if tlsConf != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.Server.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		log.Warn("shutdown grace period ended with requests in flight", "error", err)
	}
	rules.Close() // no new runs
	jobs.Close()  // jobs stop where they are, to be resumed at the next start
	c.Close(sctx) // fills finish within the grace, then the index closes
	return serveErr
}

// remotes builds a client per upstream and per target: the cache's
// upstreams, the proxy's routes and the jobs' push targets.
func remotes(cfg *fileConfig, um *upstream.Metrics, log *slog.Logger) (ups []cache.Upstream, routes []proxy.Route, targets map[string]replicate.Target, err error) {
	for _, u := range cfg.Upstreams {
		client, err := u.client(um, false, 0, log)
		if err != nil {
			return nil, nil, nil, err
		}
		ups = append(ups, cache.Upstream{Name: u.Name, Source: client, TagTTL: *u.TagTTL,
			NegativeTTL: *u.NegativeTTL, RevalidateTimeout: u.Revalidate,
			MaxFills: u.maxFills(), FillGrace: u.FillGrace, WaitTimeout: u.WaitTimeout, EagerFill: u.EagerFill == nil || *u.EagerFill,
			Private: u.private()})
		routes = append(routes, proxy.Route{Name: u.Name, Aliases: u.Aliases, Default: u.Default,
			Status: func() any { return client.Health() }})
	}
	targets = map[string]replicate.Target{}
	for _, t := range cfg.Targets {
		client, err := t.client(um, true, t.chunkBytes, log)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("target: %w", err)
		}
		targets[t.Name] = client
	}
	return ups, routes, targets, nil
}
