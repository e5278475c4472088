package kubetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// Versions of the cached tools; they must match tests/tools/build.sh and its scratch modules.
const (
	KubeVersion = "1.37.2"
	EtcdVersion = "3.7.3"
	HelmVersion = "v3.22.0"
)

// Binaries are absolute paths of the cached tools.
type Binaries struct {
	APIServer, Etcd, Helm string
}

// CacheDir is the versioned tool cache tests/tools/build.sh fills.
func CacheDir() string { return tooling.CacheDir() }

func cachedBinaries() Binaries {
	c := CacheDir()
	return Binaries{
		APIServer: filepath.Join(c, "kube-"+KubeVersion, "kube-apiserver"),
		Etcd:      filepath.Join(c, "kube-"+KubeVersion, "etcd"),
		Helm:      filepath.Join(c, "helm-"+HelmVersion, "helm"),
	}
}

func (b Binaries) missing() []string { return tooling.Missing(b.APIServer, b.Etcd, b.Helm) }

// EnsureBinaries returns the cached kube-apiserver, etcd and helm, building the missing ones
// with `tests/tools/build.sh kube helm` (~20 minutes cold). Call it before
// netns.EnterPrivate: inside the private namespace the module proxy is unreachable, so there
// it only finds what the outer process built.
func EnsureBinaries(ctx context.Context) (Binaries, error) {
	b := cachedBinaries()
	if err := tooling.Ensure(ctx, []string{b.APIServer, b.Etcd, b.Helm}, "kube", "helm"); err != nil {
		return Binaries{}, err
	}
	return b, nil
}

// PrepareTests is a TestMain's set-up for tests on a real API server: it finds (or
// builds, ~20 min cold) kube-apiserver and etcd, then enters a private network
// namespace. It returns why the binaries are missing (also written to stderr, naming
// pkg), so that the real API server tests fail and the others still run.
func PrepareTests(pkg string) error {
	err := tooling.EnsureAsRoot(time.Hour, EnsureBinaries)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", pkg, err)
	}
	netns.EnterPrivate()
	return err
}
