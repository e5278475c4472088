package spiretest

import (
	"context"
	"path/filepath"

	"github.com/ambitmesh/ambit/tests/tooling"
)

// Version of the cached SPIRE binaries; it must match tests/tools/build.sh and
// tests/tools/spire/go.mod.
const Version = "1.13.3"

// Binaries are absolute paths of the cached SPIRE binaries.
type Binaries struct {
	Server, Agent string
}

// CacheDir is the versioned tool cache tests/tools/build.sh fills.
func CacheDir() string { return tooling.CacheDir() }

func cachedBinaries() Binaries {
	dir := filepath.Join(CacheDir(), "spire-"+Version)
	return Binaries{
		Server: filepath.Join(dir, "spire-server"),
		Agent:  filepath.Join(dir, "spire-agent"),
	}
}

func (b Binaries) missing() []string { return tooling.Missing(b.Server, b.Agent) }

// EnsureBinaries returns the cached spire-server and spire-agent, building the missing ones
// with `tests/tools/build.sh spire` (~22 CPU-minutes cold). Call it before
// netns.EnterPrivate: inside the private namespace the module proxy is unreachable, so there
// it only finds what the outer process built.
func EnsureBinaries(ctx context.Context) (Binaries, error) {
	b := cachedBinaries()
	if err := tooling.Ensure(ctx, []string{b.Server, b.Agent}, "spire"); err != nil {
		return Binaries{}, err
	}
	return b, nil
}
