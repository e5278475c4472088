// Package kube is the Kubernetes source of Ambit's mesh model: client-go
// informers on Namespaces, Pods, Services, discovery.k8s.io/v1 EndpointSlices
// and Nodes' metadata, mapped to a discovery.Input and published into a
// discovery.Store through discovery.Build after every (debounced) change.
// Istio's policies (Config.Policies, package istiopolicy), its
// DestinationRules (Config.Traffic, package istiotraffic) and the Gateway
// API's waypoints and routes (Config.Gateways, package gatewayapi) come
// from feeds that link their own clients; package cluster assembles all.
//
// Mapping decisions:
//   - Pods become workloads unless they use the host network (they share the
//     node's IP), have finished (phase Succeeded or Failed) or have no IP yet
//     (recorded as a Problem). Pods being deleted are kept until they are
//     gone: they still serve during their grace period.
//   - A pod labelled gateway.networking.k8s.io/gateway-name with a declared
//     waypoint's name runs that waypoint only while its Ready condition is
//     True; until then it is left out (a Problem), so no traffic goes to it
//     and no destination accepts traffic from it.
//   - Services become services with their labels (istio.io/use-waypoint),
//     VIPs from spec.clusterIPs ("None" and ExternalName services give none;
//     ExternalName services are left out) and their TCP ports only, with
//     name and appProtocol (ztunnel carries TCP; a UDP port sharing a number
//     with a TCP one would otherwise clash).
//   - Endpoints come from the EndpointSlices labelled
//     kubernetes.io/service-name: the ready endpoints, or, when none is
//     ready, the serving ones (terminating but still serving), as kube-proxy
//     does. An endpoint names its workload only when the target pod is in
//     the model and owns the address.
//   - A named target port is resolved from the slices, whose ports carry the
//     service port's name and the number it resolved to. When endpoints
//     disagree the number with the most endpoints wins (lowest on a tie) and
//     a Problem is recorded; when no slice resolves it, TargetPort stays 0,
//     which ztunnel treats as "same as the service port", and a Problem is
//     recorded if the service has endpoints.
//   - Nodes (Config.Metadata: their metadata only, trimmed to the topology
//     labels) become nodes whose locality is topology.kubernetes.io/region,
//     topology.kubernetes.io/zone and topology.istio.io/subzone; Build gives it
//     to their pods. A pod's node not in the cache (yet) is declared without a
//     locality, so the pod stays. A pod whose node gives no locality takes the
//     zone its EndpointSlice endpoints name, when they do. Only label changes
//     of a Node rebuild the model.
//   - A Service's spec.trafficDistribution PreferClose or PreferSameZone is
//     kept; other values (PreferSameNode) are ignored with a Problem.
//   - DestinationRules (Config.Traffic, package istiotraffic) are carried as
//     decoded, oldest first; those that cannot be decoded are Problems and the
//     model's TrafficProblems.
//   - discovery.Build rejects a whole input on conflicts that are transient
//     in Kubernetes (a reused pod IP, a recreated service). The source leaves
//     out each object Build names, records a Problem, and builds again, a
//     bounded number of times. Pods are ordered so that on an IP conflict a
//     pod not being deleted wins, then the newest.
package kube
