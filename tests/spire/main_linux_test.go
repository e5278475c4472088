package spiretest_test

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
	// Build (or find) the binaries in the outer process, where the module proxy is reachable;
	// the re-executed child in its private namespace then finds them in the cache.
	if os.Geteuid() == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		_, err := spiretest.EnsureBinaries(ctx)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "spiretest: %v\n", err)
			os.Exit(1)
		}
	}
	netns.EnterPrivate()
	goleak.VerifyTestMain(m)
}

func testingNotRoot() bool { return os.Geteuid() != 0 }
