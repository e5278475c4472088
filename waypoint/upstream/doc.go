// Package upstream is the waypoint's view of one backend, a Service port: what
// Envoy calls a cluster. It compiles Istio DestinationRules into a Policy per
// Service port (Compile, then Policies.For or ForService) and keeps the live
// state of the port's endpoints in a Cluster: load balancing, locality
// priorities, circuit breakers and outlier detection, with Envoy's semantics
// as Istio configures them (docs/resilience.md lists every setting). It is
// pure: no sockets, no HTTP, no logging; the waypoint calls it around each
// request and turns its events and status into logs and metrics.
//
// Per request the waypoint does, in order:
//
//	release, err := cluster.StartRequest()       // MaxRequests, else UO
//	key, ok, cookie := pol.LB.Hash.Key(input)     // consistent hash only; cookie to Set
//	host, err := cluster.Pick(upstream.PickRequest{Hash: key, HasHash: ok, Exclude: tried})
//	done := host.Start()                          // active requests, for LEAST_REQUEST
//	... dial (OpenConn, StartPending while waiting), send ...
//	done(upstream.Result{Status: code})           // or {Local: upstream.ConnectFailed}
//	release()
//
// and before each retry TryRetry (MaxRetries or the retry budget) and
// Backoff.
package upstream
