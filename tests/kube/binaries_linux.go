package kubetest

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
func CacheDir() string {
	root := os.Getenv("AMBIT_TOOLS_CACHE")
	if root == "" {
		root = "/var/cache/ambit-tools"
	}
	return filepath.Join(root, "v1")
}

func cachedBinaries() Binaries {
	c := CacheDir()
	return Binaries{
		APIServer: filepath.Join(c, "kube-"+KubeVersion, "kube-apiserver"),
		Etcd:      filepath.Join(c, "kube-"+KubeVersion, "etcd"),
		Helm:      filepath.Join(c, "helm-"+HelmVersion, "helm"),
	}
}

func (b Binaries) missing() []string {
	var m []string
	for _, p := range []string{b.APIServer, b.Etcd, b.Helm} {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			m = append(m, p)
		}
	}
	return m
}

// EnsureBinaries returns the cached kube-apiserver, etcd and helm, building the missing ones
// with `tests/tools/build.sh kube helm` (~20 minutes cold). Call it before
// netns.EnterPrivate: inside the private namespace the module proxy is unreachable, so there
// it only finds what the outer process built.
func EnsureBinaries(ctx context.Context) (Binaries, error) {
	b := cachedBinaries()
	missing := b.missing()
	if len(missing) == 0 {
		return b, nil
	}
	if netns.InPrivate() {
		return Binaries{}, fmt.Errorf("kube test binaries %v missing inside a private network namespace (no module proxy here): call kubetest.EnsureBinaries before netns.EnterPrivate, or run tests/tools/build.sh kube helm", missing)
	}
	script, err := buildScript()
	if err != nil {
		return Binaries{}, err
	}
	fmt.Fprintf(os.Stderr, "kubetest: building %v with %s kube helm (about 20 minutes cold)\n", missing, script)
	cmd := exec.CommandContext(ctx, script, "kube", "helm")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return Binaries{}, fmt.Errorf("run %s kube helm: %w\n%s", script, err, tail(out.Bytes(), 8<<10))
	}
	if missing := b.missing(); len(missing) > 0 {
		return Binaries{}, fmt.Errorf("%s kube helm succeeded but %v are missing", script, missing)
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
