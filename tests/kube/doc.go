// Package kubetest runs a real kube-apiserver and etcd for tests: no kubelet, scheduler or
// controller-manager, so tests write what those would (pod status, EndpointSlices).
//
// The binaries are built once by tests/tools/build.sh from scratch modules outside Ambit's
// go.mod, into ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/kube-1.37.2/ (kube-apiserver,
// etcd) and .../v1/helm-v3.22.0/helm. A cold build takes ~20 minutes of both cores, longer
// than go test's default timeout; run `tests/tools/build.sh kube helm` first or pass
// -timeout 40m.
//
// Because the Go module proxy is unreachable from a private network namespace, TestMain must
// call EnsureBinaries before netns.EnterPrivate: the outer process builds, and the re-executed
// child only finds the cached files.
//
//	func TestMain(m *testing.M) {
//		if err := tooling.EnsureAsRoot(time.Hour, kubetest.EnsureBinaries); err != nil { ... }
//		netns.EnterPrivate()
//		os.Exit(m.Run())
//	}
//
// StartForTest starts a cluster that a test's cleanup closes.
package kubetest
