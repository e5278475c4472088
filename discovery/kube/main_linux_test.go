package kube

import (
	"fmt"
	"os"
	"testing"
	"time"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// binariesErr is why the real API server tests cannot run (nil when they can).
var binariesErr error

func TestMain(m *testing.M) {
	// Find (or build, ~20 min cold) kube-apiserver and etcd; without them the real API
	// server tests fail, the others still run.
	if binariesErr = tooling.EnsureAsRoot(time.Hour, kubetest.EnsureBinaries); binariesErr != nil {
		fmt.Fprintf(os.Stderr, "discovery/kube: %v\n", binariesErr)
	}
	netns.EnterPrivate()
	os.Exit(m.Run())
}
