package service

import (
	"fmt"
	"os"
	"testing"
	"time"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// binariesErr is why the real API server test cannot run (nil when it can).
var binariesErr error

func TestMain(m *testing.M) {
	// Find (or build, ~20 min cold) kube-apiserver and etcd; without them the real API
	// server test fails, the others still run.
	if binariesErr = tooling.EnsureAsRoot(time.Hour, kubetest.EnsureBinaries); binariesErr != nil {
		fmt.Fprintf(os.Stderr, "identity/ca/service: %v\n", binariesErr)
	}
	netns.EnterPrivate()
	os.Exit(m.Run())
}
