package mesh

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
	spiretest "github.com/ambitmesh/ambit/tests/spire"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// Require is for the tests of a package run by TestMain: it skips tb when not root and
// fails it when TestMain could not start m.
func Require(tb testing.TB, m *Mesh) {
	tb.Helper()
	netns.RequireRoot(tb)
	if m == nil {
		tb.Fatal("mesh not started")
	}
}

// TestMain runs a test package that shares one mesh: as root it enters a private network
// namespace (building the Kubernetes tools first when opts.Kube, while the module proxy is
// still reachable), starts the mesh, calls setup, runs the tests and prints every process's
// logs when a test failed (or AMBIT_E2E_LOGS is set). Not root: the tests run and skip.
// It returns the exit code for os.Exit.
func TestMain(tm *testing.M, opts Options, setup func(context.Context, *Mesh) (cleanup func(), err error)) int {
	if opts.Kube {
		if err := tooling.EnsureAsRoot(40*time.Minute, kubetest.EnsureBinaries); err != nil {
			fmt.Fprintln(os.Stderr, "kube binaries:", err)
			return 1
		}
	}
	if opts.IstioEcho {
		if err := tooling.EnsureAsRoot(20*time.Minute, IstioEchoBinaries); err != nil {
			fmt.Fprintln(os.Stderr, "istio echo binaries:", err)
			return 1
		}
		if err := tooling.EnsureAsRoot(10*time.Minute, FortioBinary); err != nil {
			fmt.Fprintln(os.Stderr, "fortio:", err)
			return 1
		}
	}
	if opts.SPIRE != nil {
		if err := tooling.EnsureAsRoot(40*time.Minute, spiretest.EnsureBinaries); err != nil {
			fmt.Fprintln(os.Stderr, "spire binaries:", err)
			return 1
		}
	}
	netns.EnterPrivate()
	if os.Geteuid() != 0 {
		return tm.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	m, err := Start(ctx, opts)
	if err != nil {
		cancel()
		fmt.Fprintln(os.Stderr, "mesh setup:", err)
		return 1
	}
	defer m.Close()
	cleanup, err := setup(ctx, m)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test setup:", err)
		fmt.Fprintln(os.Stderr, m.Logs())
		return 1
	}
	if cleanup != nil {
		defer cleanup()
	}
	code := tm.Run()
	if code != 0 || os.Getenv("AMBIT_E2E_LOGS") != "" {
		fmt.Fprintln(os.Stderr, m.Logs())
		if m.Kube != nil {
			fmt.Fprintln(os.Stderr, m.Kube.Logs())
		}
		if m.Spire != nil {
			fmt.Fprintln(os.Stderr, m.Spire.Logs())
		}
	}
	return code
}
