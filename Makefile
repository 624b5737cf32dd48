# Wharf. `make run` serves with config.example.yml; `make test` runs every
# test: lint, the unit tests, the end-to-end tests and a short fuzz run
# (installing what each needs first when missing: .ci/install-tools).
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: build run test test-unit test-e2e fuzz lint bench bench-scale clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/wharf ./cmd/wharf

run: build
	./bin/wharf serve --config config.example.yml

lint:
	./.ci/install-tools lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e ./cmd/wharf-bench
	staticcheck ./...
	staticcheck -tags e2e ./e2e ./cmd/wharf-bench

# Every package but the end-to-end tests, under the race detector.
test-unit:
	./.ci/install-tools unit
	$(GO) test -race -count=1 -timeout 8m ./...

# The real wharf binary against real clients, registries, S3 and TLS
# (package e2e, built with -tags e2e); the containerd test needs root.
test-e2e:
	./.ci/install-tools e2e
	$(GO) test -race -count=1 -tags e2e -timeout 15m ./e2e ./cmd/wharf-bench

fuzz:
	$(GO) test -run NONE -fuzz FuzzMembership -fuzztime 10s ./cache

test: lint test-unit test-e2e fuzz

# End-to-end figures against direct upstream and distribution's proxy mode.
# `make bench PPROF=bin/pprof` also writes CPU profiles of the cold pulls.
bench: build
	$(if $(PPROF),mkdir -p $(PPROF))
	$(GO) run ./cmd/wharf-bench -wharf bin/wharf -json bin/bench.json -upstream-rtt 20ms $(if $(PPROF),-pprof $(PPROF))

# How costs grow with the store: 10k, 100k and 1M blobs (N/10 repositories,
# N tags), exiting non-zero if 1M misses a target (docs/benchmarks.md).
# About 15 minutes and 10 GiB of temporary disk. SCALE=10000,100000 for less.
SCALE ?= 10000,100000,1000000
bench-scale: build
	$(GO) run ./cmd/wharf-bench -wharf bin/wharf -scale $(SCALE) -json bin/bench-scale.json

clean:
	rm -rf bin
