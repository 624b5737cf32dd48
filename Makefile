# Wharf. `make run` serves with config.example.yml; `make test` runs every
# test (installing skopeo, containerd and crane first when missing).
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: build run test tools lint bench clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/wharf ./cmd/wharf

run: build
	./bin/wharf serve --config config.example.yml

tools:
	./.ci/install-tools

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

test: lint
	$(GO) test -race -count=1 -timeout 8m ./...
	$(GO) test -run NONE -fuzz FuzzMembership -fuzztime 10s ./cache

# End-to-end figures against direct upstream and distribution's proxy mode.
# `make bench PPROF=bin/pprof` also writes CPU profiles of the cold pulls.
bench: build
	$(if $(PPROF),mkdir -p $(PPROF))
	$(GO) run ./cmd/wharf-bench -wharf bin/wharf -json bin/bench.json -upstream-rtt 20ms $(if $(PPROF),-pprof $(PPROF))

clean:
	rm -rf bin
