package spire

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambitmesh/ambit/tests/netns"
	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

func TestMain(m *testing.M) {
	// The real-SPIRE test needs the cached binaries; find (or build) them in the outer
	// process, where the module proxy is reachable, then run everything in a private
	// network namespace (the SPIRE server listens on loopback there).
	if os.Geteuid() == 0 && !netns.InPrivate() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		_, err := spiretest.EnsureBinaries(ctx)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "spire binaries: %v\n", err)
			os.Exit(1)
		}
	}
	netns.EnterPrivate()
	goleak.VerifyTestMain(m)
}
