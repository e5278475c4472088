package kube

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
)

// binariesErr is why the real API server tests cannot run (nil when they can).
var binariesErr error

func TestMain(m *testing.M) {
	// Find (or build, ~20 min cold) kube-apiserver and etcd in the outer
	// process, where the module proxy is reachable; the re-executed child in
	// its private network namespace finds them in the cache.
	if os.Geteuid() == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		_, binariesErr = kubetest.EnsureBinaries(ctx)
		cancel()
		if binariesErr != nil {
			fmt.Fprintf(os.Stderr, "discovery/kube: %v\n", binariesErr)
		}
	}
	netns.EnterPrivate()
	os.Exit(m.Run())
}
