package kubetest_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

func TestMain(m *testing.M) {
	if err := tooling.EnsureAsRoot(time.Hour, kubetest.EnsureBinaries); err != nil {
		fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
		os.Exit(1)
	}
	netns.EnterPrivate()
	os.Exit(m.Run())
}
