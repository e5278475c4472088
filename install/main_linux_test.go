package install

import (
	"context"
	"fmt"
	"os"
	"testing"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The cached helm, kube-apiserver and etcd, found (or built) before entering the private
// network namespace, where the Go module proxy is unreachable.
var (
	bins    kubetest.Binaries
	binsErr error
)

func TestMain(m *testing.M) {
	bins, binsErr = kubetest.EnsureBinaries(context.Background())
	if binsErr != nil && !netns.InPrivate() {
		fmt.Fprintln(os.Stderr, "install: ", binsErr)
	}
	netns.EnterPrivate()
	os.Exit(m.Run())
}

// requireBinaries fails when the tools are missing: they are part of the test. Only a
// non-root run, which cannot write the tool cache, skips instead.
func requireBinaries(tb testing.TB) kubetest.Binaries {
	tb.Helper()
	if binsErr != nil {
		if os.Geteuid() != 0 {
			tb.Skipf("kube test binaries (not root, so not built): %v", binsErr)
		}
		tb.Fatalf("kube test binaries: %v", binsErr)
	}
	return bins
}
