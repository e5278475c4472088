package kubetest

import (
	"context"
	"path/filepath"

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
