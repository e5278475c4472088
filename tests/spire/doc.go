// Package spiretest runs a real SPIRE server and one SPIRE agent per node for tests.
//
// The binaries (v1.13.3) are built once by `tests/tools/build.sh spire` from a scratch module
// outside Ambit's go.mod, into ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/spire-1.13.3/
// (spire-server, spire-agent). A cold build takes ~22 CPU-minutes, longer than go test's
// default timeout: run the script first or pass -timeout 40m.
//
// The server listens on loopback TCP (127.0.0.1, a free port) and the agents serve unix
// sockets, so run every process in the test's own private network namespace. Because the Go
// module proxy is unreachable from there, the binaries must be found (or built) before
// netns.EnterPrivate: the outer process builds, the re-executed child only finds. TestMain
// does that (and checks for leaked goroutines):
//
//	func TestMain(m *testing.M) { spiretest.TestMain(m) }
//
// Registration layout (the one docs/spire.md recommends): each agent attests with a join
// token minted with -spiffeID spiffe://<td>/node/<node>, so every node has a stable alias
// (Server.NodeID); pod entries are parented to the alias of the node the pod runs on, with
// k8s:ns and k8s:sa selectors that only the Delegated Identity API matches. The tunnel's own
// entry (Server.RegisterTunnel) is parented to the same alias, and its SPIFFE ID is in the
// agent's authorized_delegates.
package spiretest
