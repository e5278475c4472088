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

// Tests use real TCP, but only inside a private network namespace: as root the
// test binary re-execs itself under `unshare -n`, brings up lo and adds
// testAddr (198.18.0.0/15). Without root the network tests skip.
const netnsEnv = "HBONE_TEST_IN_NETNS"

const testAddr = "198.18.0.1"

var inNetns bool

func TestMain(m *testing.M) {
	if os.Getenv(netnsEnv) == "1" {
		// Fuzz workers are started by the process already set up in the namespace.
		setup := [][]string{
			{"link", "set", "lo", "up"},
			{"addr", "add", testAddr + "/32", "dev", "lo"},
		}
		if slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, "-test.fuzzworker") }) {
			setup = nil
		}
		for _, args := range setup {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "netns setup: ip %v: %v: %s\n", args, err, out)
				os.Exit(1)
			}
		}
		inNetns = true
		goleak.VerifyTestMain(m)
		return
	}
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
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

func needNet(tb testing.TB) {
	tb.Helper()
	if !inNetns {
		tb.Skip("needs root to create a private network namespace")
	}
}
