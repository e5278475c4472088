package kubetest_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
)

func TestMain(m *testing.M) {
	// Build (or find) the binaries in the outer process, where the module proxy is reachable;
	// the re-executed child in its private namespace then finds them in the cache.
	if os.Geteuid() == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		_, err := kubetest.EnsureBinaries(ctx)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
			os.Exit(1)
		}
	}
	netns.EnterPrivate()
	os.Exit(m.Run())
}
