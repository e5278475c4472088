package mesh

import (
	"context"
	"path/filepath"

	"github.com/ambitmesh/ambit/tests/tooling"
)

// IstioEcho are Istio's echo server and client (istio.io/istio/pkg/test/echo), built into
// the tools cache by tests/tools/build.sh istio-echo.
type IstioEcho struct{ Server, Client string }

// IstioEchoBinaries returns the cached binaries, building them when missing (a minute or
// two cold; outside the private network namespace only, where the module proxy is).
func IstioEchoBinaries(ctx context.Context) (IstioEcho, error) {
	dir := filepath.Join(tooling.CacheDir(), "istio-echo")
	b := IstioEcho{Server: filepath.Join(dir, "server"), Client: filepath.Join(dir, "client")}
	return b, tooling.Ensure(ctx, []string{b.Server, b.Client}, "istio-echo")
}

// FortioBinary returns the cached fortio (tests/tools/build.sh fortio), building it when
// missing: its server answers with a status or delay set per process, the resilience
// tests' faulty endpoints.
func FortioBinary(ctx context.Context) (string, error) {
	p := filepath.Join(tooling.CacheDir(), "fortio")
	return p, tooling.Ensure(ctx, []string{p}, "fortio")
}
