package cache

import (
	"io"
	"testing"
	"time"
)

// The stall bound is on a read waiting for its source, not on the time the
// fill spends between reads (a slow disk under the fill): a source that
// answers every read at once is never cut off.
func TestStallGuardTimesReadsOnly(t *testing.T) {
	const d = 50 * time.Millisecond
	pr, pw := io.Pipe()
	go func() {
		for range 3 {
			pw.Write([]byte{1}) // each waits for its read
		}
		pw.Close()
	}()
	g := stallGuard(pr, d)
	defer g.Close()
	p := make([]byte, 1)
	for i := range 3 {
		if _, err := g.Read(p); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		time.Sleep(2 * d) // the fill busy elsewhere: the scenario, not synchronisation
	}
}
