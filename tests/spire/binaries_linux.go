package spiretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/ambitmesh/ambit/tests/netns"
)

// Version of the cached SPIRE binaries; it must match tests/tools/build.sh and
// tests/tools/spire/go.mod.
const Version = "1.13.3"

// Binaries are absolute paths of the cached SPIRE binaries.
type Binaries struct {
	Server, Agent string
}

// CacheDir is the versioned tool cache tests/tools/build.sh fills.
func CacheDir() string {
	root := os.Getenv("AMBIT_TOOLS_CACHE")
	if root == "" {
		root = "/var/cache/ambit-tools"
	}
	return filepath.Join(root, "v1")
}

func cachedBinaries() Binaries {
	dir := filepath.Join(CacheDir(), "spire-"+Version)
	return Binaries{
		Server: filepath.Join(dir, "spire-server"),
		Agent:  filepath.Join(dir, "spire-agent"),
	}
}

func (b Binaries) missing() []string {
	var m []string
	for _, p := range []string{b.Server, b.Agent} {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			m = append(m, p)
		}
	}
	return m
}

// EnsureBinaries returns the cached spire-server and spire-agent, building the missing ones
// with `tests/tools/build.sh spire` (~22 CPU-minutes cold). Call it before
// netns.EnterPrivate: inside the private namespace the module proxy is unreachable, so there
// it only finds what the outer process built.
func EnsureBinaries(ctx context.Context) (Binaries, error) {
	b := cachedBinaries()
	missing := b.missing()
	if len(missing) == 0 {
		return b, nil
	}
	if netns.InPrivate() {
		return Binaries{}, fmt.Errorf("spire test binaries %v missing inside a private network namespace (no module proxy here): call spiretest.EnsureBinaries before netns.EnterPrivate, or run tests/tools/build.sh spire", missing)
	}
	script, err := buildScript()
	if err != nil {
		return Binaries{}, err
	}
	fmt.Fprintf(os.Stderr, "spiretest: building %v with %s spire (about 22 CPU-minutes cold)\n", missing, script)
	cmd := exec.CommandContext(ctx, "nice", "-n", "19", script, "spire")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return Binaries{}, fmt.Errorf("run %s spire: %w\n%s", script, err, tail(out.Bytes(), 8<<10))
	}
	if missing := b.missing(); len(missing) > 0 {
		return Binaries{}, fmt.Errorf("%s spire succeeded but %v are missing", script, missing)
	}
	return b, nil
}

// buildScript finds tests/tools/build.sh: above the working directory (go test runs in the
// package directory), else next to this source file (builds without -trimpath).
func buildScript() (string, error) {
	const rel = "tests/tools/build.sh"
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, rel)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("find tests/tools/build.sh: not above the working directory nor this source file")
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
