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
)

// TestMain runs a test package that shares one mesh: as root it enters a private network
// namespace (building the Kubernetes tools first when opts.Kube, while the module proxy is
// still reachable), starts the mesh, calls setup, runs the tests and prints every process's
// logs when a test failed (or AMBIT_E2E_LOGS is set). Not root: the tests run and skip.
// It returns the exit code for os.Exit.
func TestMain(tm *testing.M, opts Options, setup func(context.Context, *Mesh) (cleanup func(), err error)) int {
	if opts.Kube && os.Geteuid() == 0 && !netns.InPrivate() {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
		_, err := kubetest.EnsureBinaries(ctx)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "kube binaries:", err)
			return 1
		}
	}
	if opts.SPIRE != nil && os.Geteuid() == 0 && !netns.InPrivate() {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
		_, err := spiretest.EnsureBinaries(ctx)
		cancel()
		if err != nil {
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
