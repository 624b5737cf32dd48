package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// The command line's conventions, the same for every subcommand: flags
// spelt --name in all help, -h and --help print the command's help with
// examples on standard output and exit 0, and a command line that does
// not parse exits 2 (any other failure exits 1).

// Exit statuses.
const (
	exitFailure = 1 // the command ran and failed: an error, a job that did not finish
	exitUsage   = 2 // the command line is wrong: nothing was done
)

// usageError is a command line that does not parse.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// usagef is a usageError, pointing at the command's help.
func usagef(cmd, format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...) + "\n(see wharf " + cmd + " --help)"}
}

// exitCode is the exit status err calls for.
func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		return exitUsage
	}
	return exitFailure
}

// help is a subcommand's synopsis and examples.
type help struct{ synopsis, about, examples string }

var helps = map[string]help{
	"serve": {"--config FILE", "Run the mirror with the configuration in FILE until SIGTERM or SIGINT.",
		"  wharf serve --config /etc/wharf/config.yml\n"},
	"check": {"--config FILE [--repair] [--sample N]", "Verify the store and its index (stop wharf serve first: the index is opened exclusively).",
		"  wharf check --config /etc/wharf/config.yml             # verify every blob\n" +
			"  wharf check --config /etc/wharf/config.yml --sample 0  # the index only, fast\n" +
			"  wharf check --config /etc/wharf/config.yml --repair\n"},
	"gc": {"--config FILE --keep SIZE [--dry-run] [--pins-age D] [--min-age D]", "Bound the shared bucket (storage.driver: s3): delete the least recently used blobs down to SIZE.",
		"  wharf gc --config /etc/wharf/config.yml --keep 500GiB --dry-run\n" +
			"  wharf gc --config /etc/wharf/config.yml --keep 500GiB\n"},
	"config": {"(check | print) --config FILE", "Check a configuration file without serving it, or print the effective configuration with every default filled in.",
		"  wharf config check --config config.yml\n" +
			"  wharf config print --config config.yml\n"},
	"prefetch": {"[flags] (-f FILE | REF... | --from-cache PATTERN...)", "Warm the cache with images and, with --push-to, copy them to a push target, blob for blob.",
		"  wharf prefetch --wait docker.io/library/alpine:3.20 ghcr.io/org/app:1.4\n" +
			"  wharf prefetch --wait --push-to harbor-b --rename harbor-a.example.com/proj/=proj-b/ -f release.txt\n" +
			"  wharf prefetch --from-cache 'docker.io/library/*' --push-to harbor-b --output json\n"},
	"jobs": {"[flags] [--cancel | --failed | --retry] [ID]", "List prefetch jobs, show one, list its failed images, cancel it, or run its failed images again.",
		"  wharf jobs\n" +
			"  wharf jobs 18ef149a7fb3a3cd7c0c91ee --failed\n" +
			"  wharf jobs --retry 18ef149a7fb3a3cd7c0c91ee\n" +
			"  wharf jobs --output json | jq '.jobs[] | select(.state != \"done\")'\n"},
	"pins": {"[flags] [--unpin REF]", "List what jobs pinned against eviction, or unpin an image.",
		"  wharf pins\n" +
			"  wharf pins --unpin docker.io/library/alpine:3.20\n"},
	"targets": {"[flags]", "Show each push target's health as the server sees it: circuit, failures, last error, what it took.",
		"  wharf targets --server https://wharf.example.com --user ops\n"},
	"replicate": {"[flags] [RULE --now [--wait] | RULE --dry-run]", "Show the replication rules and their last runs, run one now, or list what a run would push.",
		"  wharf replicate\n" +
			"  wharf replicate services-to-b --dry-run\n" +
			"  wharf replicate services-to-b --now --wait\n"},
}

// command is a subcommand's flags and help.
type command struct {
	*flag.FlagSet
	name   string
	stdout io.Writer
}

// newCommand starts the flags of subcommand name; a flag error is
// written to stderr.
func newCommand(name string, stdout, stderr io.Writer) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &command{FlagSet: fs, name: name, stdout: stdout}
	fs.Usage = func() { fmt.Fprintf(stderr, "run wharf %s --help for its flags and examples\n", name) }
	return c
}

// parse reads flags wherever they stand among the arguments (`wharf
// prefetch REF --wait` as well as `--wait REF`) and returns the others.
// -h or --help prints the help and returns flag.ErrHelp; a bad flag is a
// usageError.
func (c *command) parse(args []string) ([]string, error) {
	for _, a := range args {
		if a == "--" {
			break
		}
		switch a {
		case "-h", "-help", "--help", "--h":
			c.printHelp(c.stdout)
			return nil, flag.ErrHelp
		}
	}
	var rest []string
	for {
		if err := c.Parse(args); err != nil {
			return nil, usageError{err.Error() + "\n(see wharf " + c.name + " --help)"}
		}
		if c.NArg() == 0 {
			return rest, nil
		}
		rest = append(rest, c.Arg(0))
		args = c.Args()[1:]
	}
}

// printHelp writes the synopsis, every flag as --name, and the examples.
func (c *command) printHelp(w io.Writer) {
	h := helps[c.name]
	fmt.Fprintf(w, "usage: wharf %s %s\n\n%s\n", c.name, h.synopsis, h.about)
	var flags strings.Builder
	c.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		fmt.Fprintf(&flags, "  %s%s", dash, f.Name)
		if arg != "" {
			fmt.Fprintf(&flags, " %s", arg)
		}
		fmt.Fprintf(&flags, "\n      %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			fmt.Fprintf(&flags, " (default %s)", f.DefValue)
		}
		flags.WriteString("\n")
	})
	if flags.Len() > 0 {
		fmt.Fprintf(w, "\nflags:\n%s", flags.String())
	}
	if h.examples != "" {
		fmt.Fprintf(w, "\nexamples:\n%s", h.examples)
	}
	fmt.Fprint(w, "\nexit status: 0 done, 1 failed, 2 the command line is wrong\n")
}
