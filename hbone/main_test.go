package hbone

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// Tests use real TCP over loopback, testAddr, and need no privileges. As root the test
// binary re-execs itself in a private network namespace (`unshare -n`, lo brought up)
// so that nothing on the host (firewall rules, capture programs other tests attach)
// sees its traffic; where that is not possible it runs in place, as it does for other
// users.
const netnsEnv = "HBONE_TEST_IN_NETNS"

const testAddr = "127.0.0.1"

func TestMain(m *testing.M) {
	if os.Getenv(netnsEnv) == "1" {
		// Fuzz workers are started by the process already set up in the namespace.
		if !slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, "-test.fuzzworker") }) {
			if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "netns setup: ip link set lo up: %v: %s\n", err, out)
				os.Exit(1)
			}
		}
		goleak.VerifyTestMain(m)
		return
	}
	if os.Geteuid() != 0 || exec.Command("unshare", "-n", "true").Run() != nil {
		goleak.VerifyTestMain(m)
		return
	}
	cmd := exec.Command("unshare", append([]string{"-n", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "re-exec under unshare -n: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// testLayers are the record layers connection tests run on (see onLayers).
var testLayers = []RecordLayer{RecordsOwn, RecordsCryptoTLS}

// onLayers runs f as one subtest (or sub-benchmark) per record layer, named after it. The fixtures
// (startServer, newTestPool, makePipe) give both ends of their connections the layer
// of the innermost such subtest, so that f's own subtests run on it too.
func onLayers[T interface{ Run(string, func(T)) bool }](t T, f func(T)) {
	for _, l := range testLayers {
		t.Run(l.String(), f)
	}
}

// layerOf is the record layer tb runs on: RecordsOwn outside onLayers.
func layerOf(tb testing.TB) RecordLayer {
	parts := strings.Split(tb.Name(), "/")
	for i := len(parts) - 1; i > 0; i-- {
		if l, err := ParseRecordLayer(parts[i]); err == nil {
			return l
		}
	}
	return RecordsOwn
}
