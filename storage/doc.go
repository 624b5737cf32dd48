// Package storage keeps blobs on disk in distribution's layout and the
// indexes that describe them in an embedded Badger database. It knows
// nothing of HTTP or upstreams: a repository here is just a name scoped by
// an upstream key.
//
// Layout under the configured root, the same as distribution's filesystem
// driver so that a store can be inspected, copied or served by other tools:
//
//	<root>
//	├── docker/registry/v2
//	│   ├── blobs
//	│   │   └── sha256 (and sha512)
//	│   │       └── <hex[:2]>
//	│   │           └── <hex>
//	│   │               └── data     layers, configs and manifests alike
//	│   └── tmp
//	│       └── <random>             fills in progress; never served by digest
//	└── index                        Badger: tags, repositories, blob records
//
// A blob becomes visible under blobs/ only after its digest and size verify:
// it is written to tmp/, fsynced, and renamed into place. tmp/ is on the same
// filesystem so the rename is atomic.
package storage
