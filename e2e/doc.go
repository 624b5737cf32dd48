// Package e2e holds Wharf's end-to-end tests: the real wharf binary (built
// once, on first use) against real registries, real clients (skopeo,
// crane, containerd's ctr, the OCI conformance suite), a real S3 store and
// real TLS. They build only with -tags e2e: `make test-e2e`.
package e2e
