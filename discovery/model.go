// Package discovery holds Ambit's in-memory mesh model (workloads, services,
// namespaces, nodes), the Store that publishes immutable snapshots of it, and
// the YAML file source. Other sources (Kubernetes) live in their own packages
// and produce the same model through Build.
package discovery

import (
	"net/netip"
)

// Protocol is how traffic reaches a workload.
type Protocol string

const (
	// ProtocolHBONE marks a workload enrolled in the mesh: reached through its
	// node's ztunnel over HBONE.
	ProtocolHBONE Protocol = "HBONE"
	// ProtocolTCP marks a workload outside the mesh: reached with plain TCP.
	ProtocolTCP Protocol = "TCP"
)

// DefaultDomainSuffix is the cluster domain used for default service hostnames.
const DefaultDomainSuffix = "cluster.local"

// DefaultServiceAccount is used for workloads that name none.
const DefaultServiceAccount = "default"

// Workload is one pod (or VM) with its addresses and identity inputs.
type Workload struct {
	UID            string `json:"uid"` // "<namespace>/<name>" if not given
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Node           string `json:"node,omitempty"`
	// Locality is where the workload runs; Build fills it from its node when unset.
	Locality Locality          `json:"locality,omitzero"`
	IPs      []netip.Addr      `json:"ips,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Enrolled is computed by Build from EnrollmentOptions.
	Enrolled bool `json:"enrolled"`
	// Protocol is computed by Build: HBONE when Enrolled, else TCP.
	Protocol Protocol `json:"protocol"`
	// Waypoint is computed by Build: the waypoint ("namespace/name") the workload's own
	// traffic (to its address) goes through, per istio.io/use-waypoint.
	Waypoint string `json:"waypoint,omitempty"`
	// BehindWaypoints is computed by Build: the waypoints that alone may reach it (its
	// own, and those of the Services it backs).
	BehindWaypoints []string `json:"behindWaypoints,omitempty"`
	// Gateway is computed by Build: the waypoint this workload runs, if any. Such a pod
	// terminates HBONE itself and is never captured.
	Gateway string `json:"gateway,omitempty"`
}

// ServicePort maps a service port to the port on its endpoints.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort"` // defaults to Port when neither it nor TargetPortName is set
	// TargetPortName is a named container port; sources that know container
	// ports (Kubernetes) resolve it. The file source only takes numbers.
	TargetPortName string `json:"targetPortName,omitempty"`
	// AppProtocol is the port's application protocol (Kubernetes appProtocol).
	AppProtocol string `json:"appProtocol,omitempty"`
}

// Endpoint is one backend address of a service. WorkloadUID is empty for
// addresses that belong to no known workload.
type Endpoint struct {
	WorkloadUID string     `json:"workload,omitempty"`
	Addr        netip.Addr `json:"addr"`
}

// Service is a set of endpoints reachable through virtual IPs and a hostname.
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Hostname  string            `json:"hostname"` // default "<name>.<ns>.svc.cluster.local"
	VIPs      []netip.Addr      `json:"vips,omitempty"`
	Ports     []ServicePort     `json:"ports,omitempty"`
	Selector  map[string]string `json:"selector,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// TrafficDistribution is Kubernetes' spec.trafficDistribution: PreferClose (or its
	// newer name PreferSameZone) keeps traffic in the client's zone while it has
	// endpoints there; empty for none.
	TrafficDistribution string `json:"trafficDistribution,omitempty"`
	// Waypoint is computed by Build: the waypoint ("namespace/name") that traffic to the
	// service's VIPs goes through, per istio.io/use-waypoint.
	Waypoint string `json:"waypoint,omitempty"`
	// Endpoints are the explicit endpoints followed by one endpoint (first IP)
	// per workload of the same namespace that matches a non-empty Selector.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Port returns the service port with number p, or nil.
func (s *Service) Port(p uint16) *ServicePort {
	for i := range s.Ports {
		if s.Ports[i].Port == p {
			return &s.Ports[i]
		}
	}
	return nil
}

// Namespace carries the labels that drive enrollment.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Node is a host running a ztunnel.
type Node struct {
	Name      string       `json:"name"`
	Addresses []netip.Addr `json:"addresses,omitempty"`
	// Locality is the node's topology (Kubernetes labels topology.kubernetes.io/region
	// and zone, topology.istio.io/subzone), inherited by its workloads.
	Locality Locality `json:"locality,omitzero"`
}

// Locality is a place in the cluster's topology, from the widest to the narrowest.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
}

// String is Istio's form, "region/zone/subzone" (empty parts kept, trailing ones cut).
func (l Locality) String() string {
	switch {
	case l.Subzone != "":
		return l.Region + "/" + l.Zone + "/" + l.Subzone
	case l.Zone != "":
		return l.Region + "/" + l.Zone
	}
	return l.Region
}

// Traffic distributions of Kubernetes Services that prefer endpoints in the client's zone.
const (
	TrafficDistributionPreferClose    = "PreferClose"
	TrafficDistributionPreferSameZone = "PreferSameZone"
)

// EnrollmentOptions decides which workloads are in the mesh.
type EnrollmentOptions struct {
	// NamespaceLabel with value EnrollValue on a namespace enrolls its pods.
	NamespaceLabel string
	// EnrollValue is the label value that enrolls (default "ambient"). A pod
	// labelled PodLabel=EnrollValue is enrolled even when its namespace is not,
	// as in Istio ambient.
	EnrollValue string
	// PodLabel with value OptOutValue on a pod keeps it out of the mesh.
	PodLabel    string
	OptOutValue string
}

// Defaults used by EnrollmentOptions.WithDefaults (Istio ambient's labels).
const (
	DefaultEnrollmentLabel = "istio.io/dataplane-mode"
	DefaultEnrollValue     = "ambient"
	DefaultOptOutValue     = "none"
)

// WithDefaults fills unset fields with Istio ambient's defaults.
func (o EnrollmentOptions) WithDefaults() EnrollmentOptions {
	if o.NamespaceLabel == "" {
		o.NamespaceLabel = DefaultEnrollmentLabel
	}
	if o.EnrollValue == "" {
		o.EnrollValue = DefaultEnrollValue
	}
	if o.PodLabel == "" {
		o.PodLabel = DefaultEnrollmentLabel
	}
	if o.OptOutValue == "" {
		o.OptOutValue = DefaultOptOutValue
	}
	return o
}

// enrolled reports whether a workload with podLabels in a namespace with
// nsLabels is in the mesh. Opt-out wins over every opt-in.
func (o EnrollmentOptions) enrolled(nsLabels, podLabels map[string]string) bool {
	if v, ok := podLabels[o.PodLabel]; ok && v == o.OptOutValue {
		return false
	}
	if v, ok := podLabels[o.PodLabel]; ok && v == o.EnrollValue {
		return true
	}
	v, ok := nsLabels[o.NamespaceLabel]
	return ok && v == o.EnrollValue
}

// selectorMatches reports whether labels satisfy every selector entry. An
// empty selector selects nothing (a service without selector, as in Kubernetes).
func selectorMatches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
