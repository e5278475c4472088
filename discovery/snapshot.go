package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/ambitmesh/ambit/policy"
)

// Snapshot is one consistent view of the mesh. It is immutable once built
// (callers must not modify it or anything it points to); lookups use maps
// and are safe for concurrent use. Slices keep the order of the Input.
type Snapshot struct {
	Version    uint64       `json:"version"`
	Workloads  []*Workload  `json:"workloads"`
	Services   []*Service   `json:"services"`
	Namespaces []*Namespace `json:"namespaces"`
	Nodes      []*Node      `json:"nodes"`
	// Policies are the PeerAuthentications and AuthorizationPolicies in force;
	// nil for none.
	Policies *policy.Set `json:"-"`
	// PolicyProblems are the policy objects' problems (they fail closed).
	PolicyProblems []string `json:"policyProblems,omitempty"`
	// Waypoints are the declared waypoints.
	Waypoints []*Waypoint `json:"waypoints,omitempty"`
	// WaypointProblems are the waypoints' and bindings' problems (each changes nothing
	// else).
	WaypointProblems []string `json:"waypointProblems,omitempty"`
	// Routes are the Gateway API routes, as declared (the waypoints compile them).
	Routes Routes `json:"-"`
	// DestinationRules are Istio's traffic policies, as declared (the waypoints
	// compile them, package waypoint/upstream).
	DestinationRules []*networkingv1.DestinationRule `json:"-"`
	// TrafficProblems are the DestinationRules that could not be decoded.
	TrafficProblems []string `json:"trafficProblems,omitempty"`

	applied       *sync.Map // *Workload -> *policy.Applied; shared by copies
	workloadByIP  map[netip.Addr]*Workload
	workloadByUID map[string]*Workload
	workloadsOn   map[string][]*Workload
	serviceByVIP  map[netip.Addr]*Service
	serviceByName map[string]*Service // "<ns>/<name>"
	serviceByHost map[string]*Service
	nodeByName    map[string]*Node
	nodeByIP      map[netip.Addr]*Node
	nsByName      map[string]*Namespace
	waypointByRef map[string]*Waypoint
}

// Input is the raw model a source produces.
type Input struct {
	Workloads  []*Workload
	Services   []*Service
	Namespaces []*Namespace
	Nodes      []*Node
	// Policies and PolicyProblems are carried into the snapshot as they are.
	Policies       *policy.Set
	PolicyProblems []string
	// Waypoints are the declared waypoints; problems with them (and with the
	// declarations they came from, in WaypointProblems) never fail the build.
	Waypoints        []*Waypoint
	WaypointProblems []string
	Routes           Routes
	// DestinationRules and TrafficProblems are carried into the snapshot as they are.
	DestinationRules []*networkingv1.DestinationRule
	TrafficProblems  []string
}

// Build validates in, fills defaults (workload UID and service account,
// service hostname and target ports), computes enrollment, protocol and
// service endpoints, and indexes the result. It copies the input, so the
// caller may reuse it. Errors are *FieldError values (see FieldErrors)
// joined, each naming the offending Input path and, for conflicts, both
// entries.
func Build(in Input, opts EnrollmentOptions) (*Snapshot, error) {
	opts = opts.WithDefaults()
	b := builder{opts: opts}
	s := b.build(in)
	if err := b.errs.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

type builder struct {
	opts EnrollmentOptions
	errs fieldErrors
}

type ref struct {
	path string
	what string // e.g. `workload default/a`
}

func (b *builder) build(in Input) *Snapshot {
	s := &Snapshot{
		Workloads:        make([]*Workload, 0, len(in.Workloads)),
		Services:         make([]*Service, 0, len(in.Services)),
		Namespaces:       make([]*Namespace, 0, len(in.Namespaces)),
		Nodes:            make([]*Node, 0, len(in.Nodes)),
		workloadByIP:     make(map[netip.Addr]*Workload),
		workloadByUID:    make(map[string]*Workload, len(in.Workloads)),
		workloadsOn:      make(map[string][]*Workload),
		serviceByVIP:     make(map[netip.Addr]*Service),
		serviceByName:    make(map[string]*Service, len(in.Services)),
		serviceByHost:    make(map[string]*Service, len(in.Services)),
		nodeByName:       make(map[string]*Node, len(in.Nodes)),
		nodeByIP:         make(map[netip.Addr]*Node),
		nsByName:         make(map[string]*Namespace, len(in.Namespaces)),
		applied:          new(sync.Map),
		Policies:         in.Policies,
		PolicyProblems:   slices.Clone(in.PolicyProblems),
		WaypointProblems: slices.Clone(in.WaypointProblems),
		Routes:           in.Routes,
		DestinationRules: in.DestinationRules,
		TrafficProblems:  slices.Clone(in.TrafficProblems),
	}
	b.namespaces(s, in.Namespaces)
	b.nodes(s, in.Nodes)
	b.waypoints(s, in.Waypoints)
	ipOwner := b.workloads(s, in.Workloads, len(in.Nodes) > 0)
	b.services(s, in.Services, ipOwner)
	b.bindWaypoints(s)
	return s
}

func (b *builder) namespaces(s *Snapshot, in []*Namespace) {
	first := make(map[string]string, len(in))
	each(b, "namespaces", in, func(path string, n *Namespace) {
		ns := &Namespace{Name: n.Name, Labels: maps.Clone(n.Labels)}
		checkLabelName(&b.errs, path+".name", ns.Name)
		checkLabels(&b.errs, path+".labels", ns.Labels)
		if !b.declare(first, path, "namespace", ns.Name) {
			return
		}
		s.Namespaces = append(s.Namespaces, ns)
		s.nsByName[ns.Name] = ns
	})
}

func (b *builder) nodes(s *Snapshot, in []*Node) {
	first := make(map[string]string, len(in))
	addrOwner := make(map[netip.Addr]ref)
	each(b, "nodes", in, func(path string, n *Node) {
		node := &Node{Name: n.Name, Locality: n.Locality}
		checkSubdomain(&b.errs, path+".name", node.Name)
		checkLocality(&b.errs, path+".locality", node.Locality)
		node.Addresses = b.claimAddrs(path+".addresses", "node "+node.Name, n.Addresses, false, addrOwner)
		if !b.declare(first, path, "node", node.Name) {
			return
		}
		s.Nodes = append(s.Nodes, node)
		s.nodeByName[node.Name] = node
		for _, a := range node.Addresses {
			s.nodeByIP[a] = node
		}
	})
}

// workloads returns who owns each workload IP, for conflicts with VIPs.
func (b *builder) workloads(s *Snapshot, in []*Workload, nodesDeclared bool) map[netip.Addr]ref {
	first := newUniques("uid", len(in))
	ipOwner := make(map[netip.Addr]ref, len(in))
	each(b, "workloads", in, func(path string, w *Workload) {
		wl := &Workload{
			UID:            w.UID,
			Name:           w.Name,
			Namespace:      w.Namespace,
			ServiceAccount: cmp.Or(w.ServiceAccount, DefaultServiceAccount),
			Node:           w.Node,
			Locality:       w.Locality,
			Labels:         maps.Clone(w.Labels),
		}
		if n := s.nodeByName[wl.Node]; n != nil && wl.Locality == (Locality{}) {
			wl.Locality = n.Locality
		}
		if wl.UID == "" {
			wl.UID = wl.Namespace + "/" + wl.Name
		}
		key := wl.Namespace + "/" + wl.Name
		checkSubdomain(&b.errs, path+".name", wl.Name)
		checkLabelName(&b.errs, path+".namespace", wl.Namespace)
		checkSubdomain(&b.errs, path+".serviceAccount", wl.ServiceAccount)
		if wl.Node != "" {
			if !isDNS1123Subdomain(wl.Node) {
				b.errs.Add(path+".node", fmt.Sprintf(msgSubdomain, wl.Node))
			} else if nodesDeclared && s.nodeByName[wl.Node] == nil {
				b.errs.Add(path+".node", fmt.Sprintf("node %q is not declared in nodes", wl.Node))
			}
		}
		checkLabels(&b.errs, path+".labels", wl.Labels)
		checkLocality(&b.errs, path+".locality", w.Locality)
		what := "workload " + key
		dup := first.duplicate(b, path, key, what, wl.UID, wl.Name != "" && wl.Namespace != "")
		wl.IPs = b.claimAddrs(path+".ips", what, w.IPs, dup, ipOwner)
		if dup {
			return
		}
		first.record(path, key, what, wl.UID)

		var nsLabels map[string]string
		if ns := s.nsByName[wl.Namespace]; ns != nil {
			nsLabels = ns.Labels
		}
		wl.Enrolled = b.opts.enrolled(nsLabels, wl.Labels)
		wl.Protocol = ProtocolTCP
		if s.waypointPod(wl) {
			wl.Enrolled = false
		}
		if wl.Enrolled || wl.Gateway != "" {
			wl.Protocol = ProtocolHBONE
		}
		s.Workloads = append(s.Workloads, wl)
		s.workloadByUID[wl.UID] = wl
		for _, a := range wl.IPs {
			s.workloadByIP[a] = wl
		}
		if wl.Node != "" {
			s.workloadsOn[wl.Node] = append(s.workloadsOn[wl.Node], wl)
		}
	})
	return ipOwner
}

func (b *builder) services(s *Snapshot, in []*Service, ipOwner map[netip.Addr]ref) {
	first := newUniques("hostname", len(in))
	vipOwner := make(map[netip.Addr]ref)
	byNS := make(map[string][]*Workload)
	for _, w := range s.Workloads {
		byNS[w.Namespace] = append(byNS[w.Namespace], w)
	}
	each(b, "services", in, func(path string, sv *Service) {
		svc := &Service{
			Name:      sv.Name,
			Namespace: sv.Namespace,
			Hostname:  sv.Hostname,
			Ports:     slices.Clone(sv.Ports),
			Selector:  maps.Clone(sv.Selector),
			Labels:    maps.Clone(sv.Labels),

			TrafficDistribution: sv.TrafficDistribution,
		}
		key := svc.Namespace + "/" + svc.Name
		what := "service " + key
		if svc.Hostname == "" {
			svc.Hostname = svc.Name + "." + svc.Namespace + ".svc." + DefaultDomainSuffix
		}
		checkLabelName(&b.errs, path+".name", svc.Name)
		checkLabelName(&b.errs, path+".namespace", svc.Namespace)
		if sv.Hostname != "" && !isDNS1123Subdomain(sv.Hostname) {
			b.errs.Add(path+".hostname", fmt.Sprintf(msgSubdomain, sv.Hostname))
		}
		checkLabels(&b.errs, path+".selector", svc.Selector)
		checkLabels(&b.errs, path+".labels", svc.Labels)
		switch svc.TrafficDistribution {
		case "", TrafficDistributionPreferClose, TrafficDistributionPreferSameZone:
		default:
			b.errs.Add(path+".trafficDistribution", fmt.Sprintf("%q is not one of %s, %s", svc.TrafficDistribution,
				TrafficDistributionPreferClose, TrafficDistributionPreferSameZone))
		}
		dup := first.duplicate(b, path, key, what, svc.Hostname, svc.Name != "" && svc.Namespace != "")
		svc.VIPs = b.claimAddrs(path+".vips", what, sv.VIPs, dup, vipOwner, ipOwner)
		b.ports(path, svc)
		b.endpoints(s, path, svc, sv.Endpoints, byNS[svc.Namespace])
		if dup {
			return
		}
		first.record(path, key, what, svc.Hostname)
		s.Services = append(s.Services, svc)
		s.serviceByName[key] = svc
		s.serviceByHost[svc.Hostname] = svc
		for _, a := range svc.VIPs {
			s.serviceByVIP[a] = svc
		}
	})
}

// declare records path as the first declaration of a kind's name, or
// reports a repeated one and returns false. An empty name has an error of its
// own.
func (b *builder) declare(first map[string]string, path, kind, name string) bool {
	if prev, dup := first[name]; dup && name != "" {
		b.errs.AddRef(path+".name", fmt.Sprintf("%s %q is already declared", kind, name), prev)
		return false
	}
	first[name] = path + ".name"
	return true
}

// uniques are the first entries of a list by namespace/name and by a second
// unique field (a workload's uid, a service's hostname).
type uniques struct {
	field  string
	names  map[string]string // key -> path of its name
	values map[string]ref
}

func newUniques(field string, n int) *uniques {
	return &uniques{field: field, names: make(map[string]string, n), values: make(map[string]ref, n)}
}

// duplicate reports whether the entry at path, what with namespace/name key
// and value in the second field, repeats an earlier one, recording the error.
// named: key is complete (an incomplete one has an error of its own).
func (u *uniques) duplicate(b *builder, path, key, what, value string, named bool) bool {
	if prev, ok := u.names[key]; ok && named {
		b.errs.AddRef(path+".name", what+" is already declared", prev)
		return true
	}
	if prev, ok := u.values[value]; ok {
		b.errs.AddRef(path+"."+u.field, fmt.Sprintf("%s %q of %s is already used by %s", u.field, value, what, prev.what), prev.path)
		return true
	}
	return false
}

// record makes the entry at path the first of its key and value.
func (u *uniques) record(path, key, what, value string) {
	u.names[key] = path + ".name"
	u.values[value] = ref{path + "." + u.field, what}
}

// each calls f with each entry of in (the Input field named field) and its
// path, reporting the nil ones.
func each[T any](b *builder, field string, in []*T, f func(path string, v *T)) {
	for i, v := range in {
		path := fmt.Sprintf("%s[%d]", field, i)
		if v == nil {
			b.errs.Add(path, "must not be nil")
			continue
		}
		f(path, v)
	}
}

// claimAddrs checks the addresses of the list at path and returns the valid
// ones, claimed for what in owners[0]; an address an owner already holds is
// refused. checkOnly (a duplicate entry) claims and returns nothing.
func (b *builder) claimAddrs(path, what string, addrs []netip.Addr, checkOnly bool, owners ...map[netip.Addr]ref) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for j, a := range addrs {
		ap := fmt.Sprintf("%s[%d]", path, j)
		a, ok := checkAddr(&b.errs, ap, a)
		if !ok || checkOnly {
			continue
		}
		if prev, taken := owner(a, owners); taken {
			if prev.what == what {
				b.errs.AddRef(ap, fmt.Sprintf("%s is listed twice", a), prev.path)
			} else {
				b.errs.AddRef(ap, fmt.Sprintf("%s of %s is already used by %s", a, what, prev.what), prev.path)
			}
			continue
		}
		owners[0][a] = ref{ap, what}
		out = append(out, a)
	}
	return out
}

func owner(a netip.Addr, owners []map[netip.Addr]ref) (ref, bool) {
	for _, o := range owners {
		if r, ok := o[a]; ok {
			return r, true
		}
	}
	return ref{}, false
}

func (b *builder) ports(path string, svc *Service) {
	byPort := make(map[uint16]string, len(svc.Ports))
	byName := make(map[string]string, len(svc.Ports))
	for j := range svc.Ports {
		p := &svc.Ports[j]
		pp := fmt.Sprintf("%s.ports[%d]", path, j)
		if p.Name != "" {
			if !isDNS1123Label(p.Name) {
				b.errs.Add(pp+".name", fmt.Sprintf(msgLabel, p.Name))
			} else if prev, dup := byName[p.Name]; dup {
				b.errs.AddRef(pp+".name", fmt.Sprintf("port name %q is already declared", p.Name), prev)
			} else {
				byName[p.Name] = pp + ".name"
			}
		}
		if p.Port == 0 {
			b.errs.Add(pp+".port", "0 is not a valid port (1-65535)")
		} else if prev, dup := byPort[p.Port]; dup {
			b.errs.AddRef(pp+".port", fmt.Sprintf("port %d is already declared", p.Port), prev)
		} else {
			byPort[p.Port] = pp + ".port"
		}
		if p.TargetPort == 0 && p.TargetPortName == "" {
			p.TargetPort = p.Port
		}
	}
}

// endpoints resolves explicit endpoints, then adds one endpoint (first IP)
// per selected workload of the service's namespace not already listed.
func (b *builder) endpoints(s *Snapshot, path string, svc *Service, explicit []Endpoint, nsWorkloads []*Workload) {
	type key struct {
		uid  string
		addr netip.Addr
	}
	seen := make(map[key]bool, len(explicit))
	for j, ep := range explicit {
		ep := ep
		ep.Addr = ep.Addr.Unmap()
		epp := fmt.Sprintf("%s.endpoints[%d]", path, j)
		var w *Workload
		if ep.WorkloadUID != "" {
			w = s.workloadByUID[ep.WorkloadUID]
			if w == nil {
				b.errs.Add(epp+".workload", fmt.Sprintf("workload %q is not declared", ep.WorkloadUID))
				continue
			}
		}
		switch {
		case w == nil && !ep.Addr.IsValid():
			b.errs.Add(epp, "must set workload or ip")
			continue
		case w != nil && !ep.Addr.IsValid():
			if len(w.IPs) == 0 {
				b.errs.Add(epp+".ip", fmt.Sprintf("must be set: workload %s has no IPs", ep.WorkloadUID))
				continue
			}
			ep.Addr = w.IPs[0]
		default:
			a, ok := checkAddr(&b.errs, epp+".ip", ep.Addr)
			if !ok {
				continue
			}
			ep.Addr = a
			if w != nil && !slices.Contains(w.IPs, a) {
				b.errs.Add(epp+".ip", fmt.Sprintf("%s is not an IP of workload %s", a, ep.WorkloadUID))
				continue
			}
		}
		k := key{ep.WorkloadUID, ep.Addr}
		if seen[k] {
			continue
		}
		seen[k] = true
		svc.Endpoints = append(svc.Endpoints, ep)
	}
	for _, w := range nsWorkloads {
		if len(w.IPs) == 0 || !selectorMatches(svc.Selector, w.Labels) {
			continue
		}
		k := key{w.UID, w.IPs[0]}
		if seen[k] {
			continue
		}
		seen[k] = true
		svc.Endpoints = append(svc.Endpoints, Endpoint{WorkloadUID: w.UID, Addr: w.IPs[0]})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// noSnapshot answers the lookups of a nil *Snapshot: every map is nil, so
// every lookup finds nothing.
var noSnapshot Snapshot

// or lets the lookups below take a nil *Snapshot.
func (s *Snapshot) or() *Snapshot {
	if s == nil {
		return &noSnapshot
	}
	return s
}

// WorkloadByIP returns the workload owning ip, or nil.
func (s *Snapshot) WorkloadByIP(ip netip.Addr) *Workload { return s.or().workloadByIP[ip.Unmap()] }

// WorkloadByUID returns the workload with uid, or nil.
func (s *Snapshot) WorkloadByUID(uid string) *Workload { return s.or().workloadByUID[uid] }

// ServiceByVIP returns the service owning ip and its port; (nil, nil) if ip
// is no service VIP, (svc, nil) if the VIP is known but the port is not.
func (s *Snapshot) ServiceByVIP(ip netip.Addr, port uint16) (*Service, *ServicePort) {
	svc := s.or().serviceByVIP[ip.Unmap()]
	if svc == nil {
		return nil, nil
	}
	return svc, svc.Port(port)
}

// ServiceByName returns the service namespace/name, or nil.
func (s *Snapshot) ServiceByName(namespace, name string) *Service {
	return s.or().serviceByName[namespace+"/"+name]
}

// ServiceByHostname returns the service with hostname, or nil.
func (s *Snapshot) ServiceByHostname(hostname string) *Service {
	return s.or().serviceByHost[hostname]
}

// WorkloadsOnNode returns the workloads scheduled on node, in Input order.
// The slice is shared: do not modify it.
func (s *Snapshot) WorkloadsOnNode(node string) []*Workload {
	return slices.Clip(s.or().workloadsOn[node])
}

// Node returns the node called name, or nil.
func (s *Snapshot) Node(name string) *Node { return s.or().nodeByName[name] }

// NodeByIP returns the node owning ip, or nil.
func (s *Snapshot) NodeByIP(ip netip.Addr) *Node { return s.or().nodeByIP[ip.Unmap()] }

// PoliciesFor returns the policies that apply to w, a workload of this
// snapshot, computed once per snapshot and workload.
func (s *Snapshot) PoliciesFor(w *Workload) *policy.Applied {
	if s.applied == nil {
		return s.Policies.For(w.Namespace, w.Labels)
	}
	if v, ok := s.applied.Load(w); ok {
		return v.(*policy.Applied)
	}
	a := s.Policies.For(w.Namespace, w.Labels)
	v, _ := s.applied.LoadOrStore(w, a)
	return v.(*policy.Applied)
}

// Namespace returns the namespace called name, or nil if it is not declared.
func (s *Snapshot) Namespace(name string) *Namespace { return s.or().nsByName[name] }

// emptySnapshot is what a Store holds before its first Set.
func emptySnapshot() *Snapshot {
	s, _ := Build(Input{}, EnrollmentOptions{})
	return s
}
