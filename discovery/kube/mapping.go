package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Kinds named in Problems.
const (
	KindNamespace     = "Namespace"
	KindPod           = "Pod"
	KindService       = "Service"
	KindEndpointSlice = "EndpointSlice"
	KindNode          = "Node"
)

// ReasonNoPodIP is the Problem reason of a pod that has no IP yet.
const ReasonNoPodIP = "no pod IP yet"

// ReasonWaypointNotReady is the Problem reason of a waypoint's pod that is not Ready:
// it is left out of the model until it is, so that no traffic is sent to it and no
// destination accepts traffic from it (Istio counts only Ready waypoint pods too).
const ReasonWaypointNotReady = "waypoint pod not ready"

// objects is one read of the informer caches. The objects are shared with
// the caches and must not be modified.
type objects struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	services   []*corev1.Service
	slices     []*discoveryv1.EndpointSlice
	// policies are compiled already; their problems join the model's.
	policies       *policy.Set
	policyProblems []Problem
	gateways       Gateways
	// nodes are the Nodes' metadata; nil when nodes are not watched.
	nodes            []*metav1.PartialObjectMetadata
	destinationRules []*networkingv1.DestinationRule
	trafficProblems  []Problem
}

type objKey struct{ kind, namespace, name string }

// mapped is the Input for Build plus, for each Input entry, the object it
// came from, so that Build's errors can be traced back.
type mapped struct {
	in       discovery.Input
	nodeKeys []objKey
	nsKeys   []objKey
	wlKeys   []objKey
	svcKeys  []objKey
	problems []Problem // Since left zero
}

func (m *mapped) problem(k objKey, reason string) {
	m.problems = append(m.problems, Problem{Kind: k.kind, Namespace: k.namespace, Name: k.name, Reason: reason})
}

// mapObjects turns objs into a discovery Input, leaving out the excluded
// objects. It does not modify objs.
func mapObjects(objs objects, domain string, excluded map[objKey]string) *mapped {
	m := &mapped{}
	nss := slices.Clone(objs.namespaces)
	slices.SortFunc(nss, func(a, b *corev1.Namespace) int { return strings.Compare(a.Name, b.Name) })
	for _, ns := range nss {
		k := objKey{KindNamespace, "", ns.Name}
		if _, ok := excluded[k]; ok {
			continue
		}
		m.in.Namespaces = append(m.in.Namespaces, &discovery.Namespace{Name: ns.Name, Labels: ns.Labels})
		m.nsKeys = append(m.nsKeys, k)
	}

	nodeLocality := m.nodes(objs.nodes, excluded)

	pods := slices.Clone(objs.pods)
	slices.SortFunc(pods, comparePods)
	m.in.Workloads = make([]*discovery.Workload, 0, len(pods))
	m.wlKeys = make([]objKey, 0, len(pods))
	byUID := make(map[string]*discovery.Workload, len(pods))
	waypoints := make(map[string]bool, len(objs.gateways.Waypoints))
	for _, w := range objs.gateways.Waypoints {
		waypoints[w.Ref()] = true
	}
	for _, p := range pods {
		k := objKey{KindPod, p.Namespace, p.Name}
		if _, ok := excluded[k]; ok {
			continue
		}
		if gw, ok := p.Labels[discovery.LabelGatewayName]; ok && waypoints[p.Namespace+"/"+gw] && !podReady(p) {
			m.problem(k, ReasonWaypointNotReady)
			continue
		}
		w := m.workload(k, p)
		if w == nil {
			continue
		}
		m.in.Workloads = append(m.in.Workloads, w)
		m.wlKeys = append(m.wlKeys, k)
		byUID[w.UID] = w
	}
	if objs.nodes != nil {
		m.undeclaredNodes(nodeLocality, excluded)
	}

	slicesBySvc := make(map[string][]*discoveryv1.EndpointSlice, len(objs.services))
	for _, sl := range objs.slices {
		svc := sl.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue // not owned by a service (custom slices): nothing to attach to
		}
		key := sl.Namespace + "/" + svc
		slicesBySvc[key] = append(slicesBySvc[key], sl)
	}
	svcs := slices.Clone(objs.services)
	slices.SortFunc(svcs, func(a, b *corev1.Service) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	m.in.Services = make([]*discovery.Service, 0, len(svcs))
	m.svcKeys = make([]objKey, 0, len(svcs))
	for _, s := range svcs {
		k := objKey{KindService, s.Namespace, s.Name}
		if _, ok := excluded[k]; ok {
			continue
		}
		svc := m.service(k, s, slicesBySvc[s.Namespace+"/"+s.Name], domain, byUID, nodeLocality)
		if svc == nil {
			continue
		}
		m.in.Services = append(m.in.Services, svc)
		m.svcKeys = append(m.svcKeys, k)
	}
	return m
}

// nodes maps the Nodes' topology labels, returning each node's locality.
func (m *mapped) nodes(nodes []*metav1.PartialObjectMetadata, excluded map[objKey]string) map[string]discovery.Locality {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b *metav1.PartialObjectMetadata) int { return strings.Compare(a.Name, b.Name) })
	out := make(map[string]discovery.Locality, len(nodes))
	for _, n := range nodes {
		k := objKey{KindNode, "", n.Name}
		if _, ok := excluded[k]; ok {
			continue
		}
		l := discovery.Locality{Region: n.Labels[LabelRegion], Zone: n.Labels[LabelZone], Subzone: n.Labels[LabelSubzone]}
		m.in.Nodes = append(m.in.Nodes, &discovery.Node{Name: n.Name, Locality: l})
		m.nodeKeys = append(m.nodeKeys, k)
		out[n.Name] = l
	}
	return out
}

// undeclaredNodes declares, without a locality, the nodes pods run on that are not
// in the cache (a node just added, or gone with its pods still listed): Build refuses
// workloads on undeclared nodes once any node is declared.
func (m *mapped) undeclaredNodes(known map[string]discovery.Locality, excluded map[objKey]string) {
	for _, w := range m.in.Workloads {
		if w.Node == "" {
			continue
		}
		if _, ok := known[w.Node]; ok {
			continue
		}
		known[w.Node] = discovery.Locality{}
		k := objKey{KindNode, "", w.Node}
		if _, ok := excluded[k]; ok {
			continue
		}
		m.in.Nodes = append(m.in.Nodes, &discovery.Node{Name: w.Node})
		m.nodeKeys = append(m.nodeKeys, k)
	}
}

// comparePods orders pods so that, when two claim the same IP, the one Build
// keeps (the first) is the likely owner: not being deleted, then newest.
// Name order makes the rest deterministic.
func comparePods(a, b *corev1.Pod) int {
	ad, bd := a.DeletionTimestamp != nil, b.DeletionTimestamp != nil
	if ad != bd {
		if ad {
			return 1
		}
		return -1
	}
	if c := b.CreationTimestamp.Compare(a.CreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// workload maps a pod, or returns nil for a pod that is not (yet) part of
// the model, recording a Problem when that is abnormal.
func (m *mapped) workload(k objKey, p *corev1.Pod) *discovery.Workload {
	if p.Spec.HostNetwork {
		return nil // shares the node's IP: not a workload of its own
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil // finished; its IP may already belong to another pod
	}
	raw := make([]string, 0, 2)
	for _, ip := range p.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && p.Status.PodIP != "" {
		raw = append(raw, p.Status.PodIP)
	}
	ips := make([]netip.Addr, 0, len(raw))
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			m.problem(k, fmt.Sprintf("invalid pod IP %q", s))
			continue
		}
		ips = append(ips, a.Unmap())
	}
	if len(ips) == 0 {
		if len(raw) == 0 {
			m.problem(k, ReasonNoPodIP)
		}
		return nil
	}
	return &discovery.Workload{
		UID:            string(p.UID),
		Name:           p.Name,
		Namespace:      p.Namespace,
		ServiceAccount: cmp.Or(p.Spec.ServiceAccountName, discovery.DefaultServiceAccount),
		Node:           p.Spec.NodeName,
		IPs:            ips,
		Labels:         p.Labels, // Build copies
	}
}

// podReady reports the pod's Ready condition.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// candidate is an endpoint address and the slice it came from.
type candidate struct {
	ep    discovery.Endpoint
	slice int
}

// service maps a Service and its EndpointSlices, or returns nil for a service
// the model does not carry (ExternalName).
func (m *mapped) service(k objKey, s *corev1.Service, sls []*discoveryv1.EndpointSlice, domain string, byUID map[string]*discovery.Workload, nodeLocality map[string]discovery.Locality) *discovery.Service {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	svc := &discovery.Service{
		Name:      s.Name,
		Namespace: s.Namespace,
		Hostname:  s.Name + "." + s.Namespace + ".svc." + domain,
		Labels:    s.Labels, // Build copies
	}
	if td := s.Spec.TrafficDistribution; td != nil && *td != "" {
		switch *td {
		case discovery.TrafficDistributionPreferClose, discovery.TrafficDistributionPreferSameZone:
			svc.TrafficDistribution = *td
		default:
			m.problem(k, fmt.Sprintf("spec.trafficDistribution: %q is not supported (%s or %s); ignored", *td,
				discovery.TrafficDistributionPreferClose, discovery.TrafficDistributionPreferSameZone))
		}
	}
	vips := s.Spec.ClusterIPs
	if len(vips) == 0 && s.Spec.ClusterIP != "" {
		vips = []string{s.Spec.ClusterIP}
	}
	for _, v := range vips {
		if v == "" || v == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			m.problem(k, fmt.Sprintf("invalid cluster IP %q", v))
			continue
		}
		svc.VIPs = append(svc.VIPs, a.Unmap())
	}

	sls = slices.Clone(sls)
	slices.SortFunc(sls, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	var ready, serving []candidate
	for i, sl := range sls {
		if sl.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		for _, e := range sl.Endpoints {
			isReady := e.Conditions.Ready == nil || *e.Conditions.Ready
			isServing := isReady
			if e.Conditions.Serving != nil {
				isServing = *e.Conditions.Serving
			}
			if !isReady && !isServing {
				continue
			}
			for _, raw := range e.Addresses {
				a, err := netip.ParseAddr(raw)
				if err != nil || a.Zone() != "" || a.IsUnspecified() {
					m.problem(objKey{KindEndpointSlice, sl.Namespace, sl.Name}, fmt.Sprintf("invalid endpoint address %q", raw))
					continue
				}
				a = a.Unmap()
				ep := discovery.Endpoint{Addr: a}
				if r := e.TargetRef; r != nil && (r.Kind == "Pod" || r.Kind == "") && r.UID != "" {
					if w := byUID[string(r.UID)]; w != nil && slices.Contains(w.IPs, a) {
						ep.WorkloadUID = w.UID
						m.zoneFallback(sl, e.Zone, w, nodeLocality)
					}
				}
				if isReady {
					ready = append(ready, candidate{ep, i})
				} else {
					serving = append(serving, candidate{ep, i})
				}
			}
		}
	}
	chosen := ready
	if len(chosen) == 0 {
		chosen = serving
	}
	perSlice := make([]int, len(sls))
	seen := make(map[netip.Addr]bool, len(chosen))
	for _, c := range chosen {
		if seen[c.ep.Addr] {
			continue
		}
		seen[c.ep.Addr] = true
		svc.Endpoints = append(svc.Endpoints, c.ep)
		perSlice[c.slice]++
	}

	for _, sp := range s.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		p := discovery.ServicePort{Name: sp.Name}
		if sp.AppProtocol != nil {
			p.AppProtocol = *sp.AppProtocol
		}
		if sp.Port < 1 || sp.Port > 65535 {
			m.problem(k, fmt.Sprintf("invalid port %d", sp.Port))
			continue
		}
		p.Port = uint16(sp.Port)
		switch sp.TargetPort.Type {
		case intstr.Int:
			if tp := sp.TargetPort.IntVal; tp != 0 {
				if tp < 1 || tp > 65535 {
					m.problem(k, fmt.Sprintf("port %d: invalid target port %d", sp.Port, tp))
					continue
				}
				p.TargetPort = uint16(tp)
			}
		case intstr.String:
			p.TargetPortName = sp.TargetPort.StrVal
			if p.TargetPortName == "" {
				break
			}
			// A numeric string is a number (the API server refuses these, but
			// Go clients can build them).
			if n, err := strconv.ParseUint(p.TargetPortName, 10, 16); err == nil && n > 0 {
				p.TargetPort, p.TargetPortName = uint16(n), ""
				break
			}
			var reason string
			p.TargetPort, reason = resolveNamed(sp.Name, p.TargetPortName, sls, perSlice)
			if reason != "" {
				m.problem(k, fmt.Sprintf("port %d: %s", sp.Port, reason))
			}
		}
		svc.Ports = append(svc.Ports, p)
	}
	return svc
}

// zoneFallback gives w the zone its EndpointSlice endpoint names when its node's
// labels give it no locality (nodes not watched, or not labelled): the EndpointSlice
// controller copies the zone from the node, so this only fills in what the model
// could not read itself.
func (m *mapped) zoneFallback(sl *discoveryv1.EndpointSlice, zone *string, w *discovery.Workload, nodeLocality map[string]discovery.Locality) {
	if zone == nil || *zone == "" || w.Locality != (discovery.Locality{}) || nodeLocality[w.Node] != (discovery.Locality{}) {
		return
	}
	if errs := validation.IsValidLabelValue(*zone); len(errs) > 0 {
		m.problem(objKey{KindEndpointSlice, sl.Namespace, sl.Name}, fmt.Sprintf("invalid endpoint zone %q: %s", *zone, strings.Join(errs, "; ")))
		return
	}
	w.Locality.Zone = *zone
}

// resolveNamed finds the number the named target port of service port
// portName resolves to, weighting each slice by how many endpoints it gives.
// A slice's ports carry the service port's name, not the target port's.
func resolveNamed(portName, target string, sls []*discoveryv1.EndpointSlice, perSlice []int) (uint16, string) {
	votes := make(map[uint16]int)
	total := 0
	for i, sl := range sls {
		total += perSlice[i]
		if perSlice[i] == 0 {
			continue
		}
		for _, ep := range sl.Ports {
			name := ""
			if ep.Name != nil {
				name = *ep.Name
			}
			if name != portName || ep.Port == nil || *ep.Port < 1 || *ep.Port > 65535 {
				continue
			}
			if ep.Protocol != nil && *ep.Protocol != corev1.ProtocolTCP {
				continue
			}
			votes[uint16(*ep.Port)] += perSlice[i]
		}
	}
	if len(votes) == 0 {
		if total == 0 {
			return 0, "" // no endpoints: nothing to reach, nothing to report
		}
		return 0, fmt.Sprintf("target port name %q is not resolved by any EndpointSlice (no container port of that name?); using the service port", target)
	}
	nums := make([]uint16, 0, len(votes))
	for n := range votes {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	best := nums[0]
	for _, n := range nums[1:] {
		if votes[n] > votes[best] {
			best = n
		}
	}
	if len(nums) == 1 {
		return best, ""
	}
	parts := make([]string, len(nums))
	for i, n := range nums {
		parts[i] = fmt.Sprintf("%d on %d endpoints", n, votes[n])
	}
	return best, fmt.Sprintf("target port name %q resolves to different numbers (%s); using %d", target, strings.Join(parts, ", "), best)
}

// locate maps a Build error path such as "workloads[3].ips[0]" to the object
// it came from and the field inside it.
func (m *mapped) locate(path string) (objKey, string, bool) {
	head, field, _ := strings.Cut(path, ".")
	name, idx, ok := strings.Cut(head, "[")
	if !ok || !strings.HasSuffix(idx, "]") {
		return objKey{}, "", false
	}
	i, err := strconv.Atoi(strings.TrimSuffix(idx, "]"))
	if err != nil || i < 0 {
		return objKey{}, "", false
	}
	var keys []objKey
	switch name {
	case "namespaces":
		keys = m.nsKeys
	case "workloads":
		keys = m.wlKeys
	case "services":
		keys = m.svcKeys
	case "nodes":
		keys = m.nodeKeys
	}
	if i >= len(keys) {
		return objKey{}, "", false
	}
	return keys[i], field, true
}
