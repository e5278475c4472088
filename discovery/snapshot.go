package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
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

	workloadByIP  map[netip.Addr]*Workload
	workloadByUID map[string]*Workload
	workloadsOn   map[string][]*Workload
	serviceByVIP  map[netip.Addr]*Service
	serviceByName map[string]*Service // "<ns>/<name>"
	serviceByHost map[string]*Service
	nodeByName    map[string]*Node
	nodeByIP      map[netip.Addr]*Node
	nsByName      map[string]*Namespace
}

// Input is the raw model a source produces.
type Input struct {
	Workloads  []*Workload
	Services   []*Service
	Namespaces []*Namespace
	Nodes      []*Node
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
	if err := b.errs.err(); err != nil {
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
		Workloads:     make([]*Workload, 0, len(in.Workloads)),
		Services:      make([]*Service, 0, len(in.Services)),
		Namespaces:    make([]*Namespace, 0, len(in.Namespaces)),
		Nodes:         make([]*Node, 0, len(in.Nodes)),
		workloadByIP:  make(map[netip.Addr]*Workload),
		workloadByUID: make(map[string]*Workload, len(in.Workloads)),
		workloadsOn:   make(map[string][]*Workload),
		serviceByVIP:  make(map[netip.Addr]*Service),
		serviceByName: make(map[string]*Service, len(in.Services)),
		serviceByHost: make(map[string]*Service, len(in.Services)),
		nodeByName:    make(map[string]*Node, len(in.Nodes)),
		nodeByIP:      make(map[netip.Addr]*Node),
		nsByName:      make(map[string]*Namespace, len(in.Namespaces)),
	}
	b.namespaces(s, in.Namespaces)
	b.nodes(s, in.Nodes)
	ipOwner := b.workloads(s, in.Workloads, len(in.Nodes) > 0)
	b.services(s, in.Services, ipOwner)
	return s
}

func (b *builder) namespaces(s *Snapshot, in []*Namespace) {
	first := make(map[string]string, len(in))
	for i, n := range in {
		path := fmt.Sprintf("namespaces[%d]", i)
		if n == nil {
			b.errs.add(path, "must not be nil")
			continue
		}
		ns := &Namespace{Name: n.Name, Labels: maps.Clone(n.Labels)}
		checkLabelName(&b.errs, path+".name", ns.Name)
		checkLabels(&b.errs, path+".labels", ns.Labels)
		if prev, dup := first[ns.Name]; dup && ns.Name != "" {
			b.errs.addRef(path+".name", fmt.Sprintf("namespace %q is already declared", ns.Name), prev)
			continue
		}
		first[ns.Name] = path + ".name"
		s.Namespaces = append(s.Namespaces, ns)
		s.nsByName[ns.Name] = ns
	}
}

func (b *builder) nodes(s *Snapshot, in []*Node) {
	first := make(map[string]string, len(in))
	addrOwner := make(map[netip.Addr]ref)
	for i, n := range in {
		path := fmt.Sprintf("nodes[%d]", i)
		if n == nil {
			b.errs.add(path, "must not be nil")
			continue
		}
		node := &Node{Name: n.Name, Addresses: make([]netip.Addr, 0, len(n.Addresses))}
		checkSubdomain(&b.errs, path+".name", node.Name)
		for j, a := range n.Addresses {
			ap := fmt.Sprintf("%s.addresses[%d]", path, j)
			a, ok := checkAddr(&b.errs, ap, a)
			if !ok {
				continue
			}
			if prev, dup := addrOwner[a]; dup {
				b.errs.addRef(ap, fmt.Sprintf("%s of node %s is already used by %s", a, node.Name, prev.what), prev.path)
				continue
			}
			addrOwner[a] = ref{ap, "node " + node.Name}
			node.Addresses = append(node.Addresses, a)
		}
		if prev, dup := first[node.Name]; dup && node.Name != "" {
			b.errs.addRef(path+".name", fmt.Sprintf("node %q is already declared", node.Name), prev)
			continue
		}
		first[node.Name] = path + ".name"
		s.Nodes = append(s.Nodes, node)
		s.nodeByName[node.Name] = node
		for _, a := range node.Addresses {
			s.nodeByIP[a] = node
		}
	}
}

// workloads returns who owns each workload IP, for conflicts with VIPs.
func (b *builder) workloads(s *Snapshot, in []*Workload, nodesDeclared bool) map[netip.Addr]ref {
	firstName := make(map[string]string, len(in))
	firstUID := make(map[string]ref, len(in))
	ipOwner := make(map[netip.Addr]ref, len(in))
	for i, w := range in {
		path := fmt.Sprintf("workloads[%d]", i)
		if w == nil {
			b.errs.add(path, "must not be nil")
			continue
		}
		wl := &Workload{
			UID:            w.UID,
			Name:           w.Name,
			Namespace:      w.Namespace,
			ServiceAccount: cmp.Or(w.ServiceAccount, DefaultServiceAccount),
			Node:           w.Node,
			IPs:            make([]netip.Addr, 0, len(w.IPs)),
			Labels:         maps.Clone(w.Labels),
			Waypoint:       w.Waypoint,
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
				b.errs.add(path+".node", fmt.Sprintf(msgSubdomain, wl.Node))
			} else if nodesDeclared && s.nodeByName[wl.Node] == nil {
				b.errs.add(path+".node", fmt.Sprintf("node %q is not declared in nodes", wl.Node))
			}
		}
		checkLabels(&b.errs, path+".labels", wl.Labels)
		dup := false
		if prev, ok := firstName[key]; ok && wl.Name != "" && wl.Namespace != "" {
			b.errs.addRef(path+".name", fmt.Sprintf("workload %s is already declared", key), prev)
			dup = true
		} else if prev, ok := firstUID[wl.UID]; ok {
			b.errs.addRef(path+".uid", fmt.Sprintf("uid %q of workload %s is already used by %s", wl.UID, key, prev.what), prev.path)
			dup = true
		}
		what := "workload " + key
		for j, a := range w.IPs {
			ap := fmt.Sprintf("%s.ips[%d]", path, j)
			a, ok := checkAddr(&b.errs, ap, a)
			if !ok || dup {
				continue
			}
			if prev, taken := ipOwner[a]; taken {
				if prev.what == what {
					b.errs.addRef(ap, fmt.Sprintf("%s is listed twice", a), prev.path)
				} else {
					b.errs.addRef(ap, fmt.Sprintf("%s of %s is already used by %s", a, what, prev.what), prev.path)
				}
				continue
			}
			ipOwner[a] = ref{ap, what}
			wl.IPs = append(wl.IPs, a)
		}
		if dup {
			continue
		}
		firstName[key] = path + ".name"
		firstUID[wl.UID] = ref{path + ".uid", what}

		var nsLabels map[string]string
		if ns := s.nsByName[wl.Namespace]; ns != nil {
			nsLabels = ns.Labels
		}
		wl.Enrolled = b.opts.enrolled(nsLabels, wl.Labels)
		wl.Protocol = ProtocolTCP
		if wl.Enrolled {
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
	}
	return ipOwner
}

func (b *builder) services(s *Snapshot, in []*Service, ipOwner map[netip.Addr]ref) {
	firstName := make(map[string]string, len(in))
	firstHost := make(map[string]ref, len(in))
	vipOwner := make(map[netip.Addr]ref)
	byNS := make(map[string][]*Workload)
	for _, w := range s.Workloads {
		byNS[w.Namespace] = append(byNS[w.Namespace], w)
	}
	for i, sv := range in {
		path := fmt.Sprintf("services[%d]", i)
		if sv == nil {
			b.errs.add(path, "must not be nil")
			continue
		}
		svc := &Service{
			Name:      sv.Name,
			Namespace: sv.Namespace,
			Hostname:  sv.Hostname,
			VIPs:      make([]netip.Addr, 0, len(sv.VIPs)),
			Ports:     slices.Clone(sv.Ports),
			Selector:  maps.Clone(sv.Selector),
		}
		key := svc.Namespace + "/" + svc.Name
		what := "service " + key
		if svc.Hostname == "" {
			svc.Hostname = svc.Name + "." + svc.Namespace + ".svc." + DefaultDomainSuffix
		}
		checkLabelName(&b.errs, path+".name", svc.Name)
		checkLabelName(&b.errs, path+".namespace", svc.Namespace)
		if sv.Hostname != "" && !isDNS1123Subdomain(sv.Hostname) {
			b.errs.add(path+".hostname", fmt.Sprintf(msgSubdomain, sv.Hostname))
		}
		checkLabels(&b.errs, path+".selector", svc.Selector)
		dup := false
		if prev, ok := firstName[key]; ok && svc.Name != "" && svc.Namespace != "" {
			b.errs.addRef(path+".name", fmt.Sprintf("service %s is already declared", key), prev)
			dup = true
		} else if prev, ok := firstHost[svc.Hostname]; ok {
			b.errs.addRef(path+".hostname", fmt.Sprintf("hostname %q of %s is already used by %s", svc.Hostname, what, prev.what), prev.path)
			dup = true
		}
		for j, a := range sv.VIPs {
			ap := fmt.Sprintf("%s.vips[%d]", path, j)
			a, ok := checkAddr(&b.errs, ap, a)
			if !ok || dup {
				continue
			}
			prev, taken := vipOwner[a]
			if !taken {
				prev, taken = ipOwner[a]
			}
			if taken {
				if prev.what == what {
					b.errs.addRef(ap, fmt.Sprintf("%s is listed twice", a), prev.path)
				} else {
					b.errs.addRef(ap, fmt.Sprintf("%s of %s is already used by %s", a, what, prev.what), prev.path)
				}
				continue
			}
			vipOwner[a] = ref{ap, what}
			svc.VIPs = append(svc.VIPs, a)
		}
		b.ports(path, svc)
		b.endpoints(s, path, svc, sv.Endpoints, byNS[svc.Namespace])
		if dup {
			continue
		}
		firstName[key] = path + ".name"
		firstHost[svc.Hostname] = ref{path + ".hostname", what}
		s.Services = append(s.Services, svc)
		s.serviceByName[key] = svc
		s.serviceByHost[svc.Hostname] = svc
		for _, a := range svc.VIPs {
			s.serviceByVIP[a] = svc
		}
	}
}

func (b *builder) ports(path string, svc *Service) {
	byPort := make(map[uint16]string, len(svc.Ports))
	byName := make(map[string]string, len(svc.Ports))
	for j := range svc.Ports {
		p := &svc.Ports[j]
		pp := fmt.Sprintf("%s.ports[%d]", path, j)
		if p.Name != "" {
			if !isDNS1123Label(p.Name) {
				b.errs.add(pp+".name", fmt.Sprintf(msgLabel, p.Name))
			} else if prev, dup := byName[p.Name]; dup {
				b.errs.addRef(pp+".name", fmt.Sprintf("port name %q is already declared", p.Name), prev)
			} else {
				byName[p.Name] = pp + ".name"
			}
		}
		if p.Port == 0 {
			b.errs.add(pp+".port", "0 is not a valid port (1-65535)")
		} else if prev, dup := byPort[p.Port]; dup {
			b.errs.addRef(pp+".port", fmt.Sprintf("port %d is already declared", p.Port), prev)
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
				b.errs.add(epp+".workload", fmt.Sprintf("workload %q is not declared", ep.WorkloadUID))
				continue
			}
		}
		switch {
		case w == nil && !ep.Addr.IsValid():
			b.errs.add(epp, "must set workload or ip")
			continue
		case w != nil && !ep.Addr.IsValid():
			if len(w.IPs) == 0 {
				b.errs.add(epp+".ip", fmt.Sprintf("must be set: workload %s has no IPs", ep.WorkloadUID))
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
				b.errs.add(epp+".ip", fmt.Sprintf("%s is not an IP of workload %s", a, ep.WorkloadUID))
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

// WorkloadByIP returns the workload owning ip, or nil.
func (s *Snapshot) WorkloadByIP(ip netip.Addr) *Workload {
	if s == nil {
		return nil
	}
	return s.workloadByIP[ip.Unmap()]
}

// WorkloadByUID returns the workload with uid, or nil.
func (s *Snapshot) WorkloadByUID(uid string) *Workload {
	if s == nil {
		return nil
	}
	return s.workloadByUID[uid]
}

// ServiceByVIP returns the service owning ip and its port; (nil, nil) if ip
// is no service VIP, (svc, nil) if the VIP is known but the port is not.
func (s *Snapshot) ServiceByVIP(ip netip.Addr, port uint16) (*Service, *ServicePort) {
	if s == nil {
		return nil, nil
	}
	svc := s.serviceByVIP[ip.Unmap()]
	if svc == nil {
		return nil, nil
	}
	return svc, svc.Port(port)
}

// ServiceByName returns the service namespace/name, or nil.
func (s *Snapshot) ServiceByName(namespace, name string) *Service {
	if s == nil {
		return nil
	}
	return s.serviceByName[namespace+"/"+name]
}

// ServiceByHostname returns the service with hostname, or nil.
func (s *Snapshot) ServiceByHostname(hostname string) *Service {
	if s == nil {
		return nil
	}
	return s.serviceByHost[hostname]
}

// WorkloadsOnNode returns the workloads scheduled on node, in Input order.
// The slice is shared: do not modify it.
func (s *Snapshot) WorkloadsOnNode(node string) []*Workload {
	if s == nil {
		return nil
	}
	return slices.Clip(s.workloadsOn[node])
}

// Node returns the node called name, or nil.
func (s *Snapshot) Node(name string) *Node {
	if s == nil {
		return nil
	}
	return s.nodeByName[name]
}

// NodeByIP returns the node owning ip, or nil.
func (s *Snapshot) NodeByIP(ip netip.Addr) *Node {
	if s == nil {
		return nil
	}
	return s.nodeByIP[ip.Unmap()]
}

// Namespace returns the namespace called name, or nil if it is not declared.
func (s *Snapshot) Namespace(name string) *Namespace {
	if s == nil {
		return nil
	}
	return s.nsByName[name]
}

// emptySnapshot is what a Store holds before its first Set.
func emptySnapshot() *Snapshot {
	s, _ := Build(Input{}, EnrollmentOptions{})
	return s
}
