package spiretest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// TestMain runs a test package that uses real SPIRE processes: as root it finds (or
// builds) the binaries while the module proxy is reachable, then runs the tests in a
// private network namespace (the server listens on its loopback) and checks that they
// leak no goroutine. It does not return.
func TestMain(m *testing.M) {
	if err := tooling.EnsureAsRoot(time.Hour, EnsureBinaries); err != nil {
		fmt.Fprintf(os.Stderr, "spire binaries: %v\n", err)
		os.Exit(1)
	}
	netns.EnterPrivate()
	goleak.VerifyTestMain(m)
}
