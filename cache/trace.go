package cache

import (
	"go.opentelemetry.io/otel"
)

// tracer makes the cache's spans (a fill, the bucket's lookups and reads):
// a no-op unless the process installed a tracer provider. A fill's span is
// a child of the request that started it, though it may outlive it, and
// upstream's round trips are children of the fill.
var tracer = otel.Tracer("github.com/wharf-registry/wharf/cache")
