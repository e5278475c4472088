package istiotraffic

import (
	"os"
	"testing"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
)

// binariesErr is why the real API server tests cannot run (nil when they can).
var binariesErr error

func TestMain(m *testing.M) {
	fakeClientsListThenWatch()
	binariesErr = kubetest.PrepareTests("discovery/kube/istiotraffic")
	os.Exit(m.Run())
}
