// Package scale makes a synthetic mesh at production scale around one measured
// destination: thousands of workloads and AuthorizationPolicies, of which a known number
// apply to the destination, most of them not matching its client, and the last one
// admitting it. The policy benchmarks share it (tests/bench's ambit-policy path and the
// micro-benchmarks of package policy), so both measure the same evaluation.
//
// It knows no model or policy types: workloads are plain values and policies are
// Kubernetes-style YAML documents, as a user writes them.
package scale

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Target is the workload whose inbound connections are measured.
type Target struct {
	Namespace string
	// Labels are the target's; the selector policies that apply to it select all of them.
	Labels map[string]string
	// Client is the principal the last applying policy admits, without "spiffe://"
	// ("td/ns/NS/sa/SA").
	Client string
	// Ports are the target ports the client connects to.
	Ports []uint16
}

// Options size the synthetic mesh.
type Options struct {
	Workloads  int // synthetic workloads
	Namespaces int // synthetic namespaces ("scale-NN") they are spread over
	Nodes      int // synthetic nodes ("scale-node-NNN") they are scheduled on
	Policies   int // AuthorizationPolicies in all
	Applying   int // of which apply to the target, the admitting one included
	// WorkloadIPs and NodeIPs hold the synthetic addresses (IPv4). The client must
	// connect from outside WorkloadIPs: non-matching rules name blocks of it.
	WorkloadIPs, NodeIPs netip.Prefix
	RootNamespace        string // "istio-system" when empty
}

// Default is the policy benchmark's size: 10,000 workloads over 50 namespaces and 100
// nodes, 1,000 AuthorizationPolicies of which 100 apply to the target, in addresses the
// netns topology does not use.
func Default() Options {
	return Options{
		Workloads: 10000, Namespaces: 50, Nodes: 100, Policies: 1000, Applying: 100,
		WorkloadIPs: netip.MustParsePrefix("198.19.64.0/18"), NodeIPs: netip.MustParsePrefix("198.19.128.0/24"),
	}
}

// Node is a synthetic node.
type Node struct {
	Name string
	IP   netip.Addr
}

// Workload is a synthetic workload.
type Workload struct {
	Name, Namespace, ServiceAccount, Node string
	IP                                    netip.Addr
	Labels                                map[string]string
}

// Mesh is the synthetic part of a model and its policies.
type Mesh struct {
	Namespaces []string // to be declared (enrolled or not: the caller decides)
	Nodes      []Node
	Workloads  []Workload
	// Manifests are every AuthorizationPolicy, as YAML documents separated by "---".
	Manifests string
	Policies  int
	// Applying are the policies ("namespace/name") that apply to the target, in the
	// evaluator's order: the root namespace's first, then source order. Deny of them are
	// DENY policies; none of them matches the client but Admit, the last one.
	Applying []string
	Deny     int
	Admit    string
}

// Prefix of the synthetic namespaces; the target and its client must be elsewhere.
const nsPrefix = "scale-"

// Generate builds the synthetic mesh. It is deterministic.
func Generate(t Target, o Options) (*Mesh, error) {
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	td, clientNS, err := splitPrincipal(t.Client)
	if err != nil {
		return nil, err
	}
	switch {
	case t.Namespace == "" || len(t.Labels) == 0 || len(t.Ports) == 0:
		return nil, errors.New("target needs a namespace, labels and ports")
	case t.Namespace == o.RootNamespace:
		return nil, fmt.Errorf("target namespace %q is the root namespace", t.Namespace)
	case strings.HasPrefix(t.Namespace, nsPrefix) || strings.HasPrefix(clientNS, nsPrefix):
		return nil, fmt.Errorf("target and client namespaces must not start with %q", nsPrefix)
	case o.Namespaces < 1 || o.Nodes < 1 || o.Workloads < 0:
		return nil, fmt.Errorf("want at least one namespace and node, got %d and %d", o.Namespaces, o.Nodes)
	case o.Applying < 1 || o.Applying > o.Policies:
		return nil, fmt.Errorf("applying policies %d: want 1 to %d", o.Applying, o.Policies)
	case !o.WorkloadIPs.Addr().Is4() || !o.NodeIPs.Addr().Is4():
		return nil, errors.New("want IPv4 workload and node address prefixes")
	}
	for _, p := range []string{"app-", "not-"} {
		// The selectors of the policies that must not apply to the target.
		if strings.HasPrefix(t.Labels["app"], p) {
			return nil, fmt.Errorf("target label app=%q: must not start with %q", t.Labels["app"], p)
		}
	}
	g := &gen{t: t, o: o, td: td, clientNS: clientNS, m: &Mesh{Policies: o.Policies}}
	for i := range o.Namespaces {
		g.m.Namespaces = append(g.m.Namespaces, g.ns(i))
	}
	for i := range o.Nodes {
		ip, err := nth(o.NodeIPs, i+1)
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		g.m.Nodes = append(g.m.Nodes, Node{Name: fmt.Sprintf("scale-node-%03d", i), IP: ip})
	}
	for i := range o.Workloads {
		ip, err := nth(o.WorkloadIPs, i+1)
		if err != nil {
			return nil, fmt.Errorf("workload %d: %w", i, err)
		}
		g.m.Workloads = append(g.m.Workloads, Workload{
			Name: fmt.Sprintf("wl-%05d", i), Namespace: g.ns(i), ServiceAccount: fmt.Sprintf("sa-%d", i%20),
			Node: g.m.Nodes[i%o.Nodes].Name, IP: ip,
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%100), "version": fmt.Sprintf("v%d", i%3+1)},
		})
	}
	g.policies()
	return g.m, nil
}

type gen struct {
	t            Target
	o            Options
	td, clientNS string
	m            *Mesh
	b            strings.Builder
	n            int // policies written
}

func (g *gen) ns(i int) string { return fmt.Sprintf("%s%02d", nsPrefix, i%g.o.Namespaces) }

// policies writes the applying ones (a tenth from the root namespace, selecting the
// target's labels; the others in its namespace, half of them namespace-wide, the
// admitting one last) and spreads the rest over the synthetic namespaces, the target's
// and the root namespace with selectors that do not select the target.
func (g *gen) policies() {
	o, t := g.o, g.t
	root := max(1, (o.Applying-1)/10)
	if o.Applying == 1 {
		root = 0
	}
	for k := range o.Applying - 1 {
		ns, sel := t.Namespace, t.Labels
		switch {
		case k < root:
			ns = o.RootNamespace
		case k%2 == 0:
			sel = nil
		}
		ref, deny := g.nonMatching(k, ns, sel)
		g.m.Applying = append(g.m.Applying, ref)
		if deny {
			g.m.Deny++
		}
	}
	g.m.Admit = g.policy(t.Namespace, t.Labels, "ALLOW",
		fmt.Sprintf("  - from: [{source: {principals: [%q]}}]\n    to: [{operation: {ports: [%s]}}]\n", t.Client, portList(t.Ports)))
	g.m.Applying = append(g.m.Applying, g.m.Admit)
	for k := range o.Policies - o.Applying {
		ns, sel := g.ns(k), map[string]string{"app": fmt.Sprintf("app-%d", k%100)}
		switch {
		case k%20 == 0:
			ns, sel = t.Namespace, map[string]string{"app": fmt.Sprintf("not-%d", k)}
		case k%20 == 1:
			ns, sel = o.RootNamespace, map[string]string{"app": fmt.Sprintf("app-%d", k%100)}
		case k%10 == 2:
			sel = nil
		}
		g.nonMatching(k, ns, sel)
	}
	g.m.Manifests = g.b.String()
}

// nonMatching writes the k-th of a rotation of rules that the client does not match,
// every third one a DENY, and returns its ref. Each needs some evaluation: other
// principals, namespaces and IP blocks, the right principal on another port, negations.
func (g *gen) nonMatching(k int, ns string, sel map[string]string) (string, bool) {
	sn, sa := g.ns(k), fmt.Sprintf("sa-%d", k%20)
	other := fmt.Sprintf("%s/ns/%s/sa/%s", g.td, sn, sa)
	block := g.block(k)
	port := g.freePort(9000 + k%500)
	if k%3 == 0 {
		rules := []string{
			fmt.Sprintf("  - from: [{source: {principals: [%q]}}]\n", other),
			fmt.Sprintf("  - from: [{source: {ipBlocks: [%q]}}]\n", block),
			fmt.Sprintf("  - from: [{source: {namespaces: [%q]}}]\n", nsPrefix+"*"),
			fmt.Sprintf("  - to: [{operation: {ports: [\"%d\", \"%d\"]}}]\n", g.freePort(22), port),
			fmt.Sprintf("  - when: [{key: destination.port, values: [\"%d\"]}]\n", port),
			fmt.Sprintf("  - from: [{source: {notNamespaces: [%q]}}]\n", g.clientNS),
		}
		return g.policy(ns, sel, "DENY", rules[(k/3)%len(rules)]), true
	}
	rules := []string{
		fmt.Sprintf("  - from: [{source: {principals: [%q, \"%s/ns/%s/sa/sa-x\"]}}]\n    to: [{operation: {ports: [%s]}}]\n", other, g.td, sn, portList(g.t.Ports)),
		fmt.Sprintf("  - from: [{source: {namespaces: [%q]}}]\n", sn),
		fmt.Sprintf("  - from: [{source: {principals: [\"*\"]}}]\n    to: [{operation: {ports: [\"%d\"]}}]\n", port),
		fmt.Sprintf("  - from: [{source: {ipBlocks: [%q]}}]\n", block),
		fmt.Sprintf("  - from: [{source: {principals: [\"%s/ns/%s/*\"]}}]\n", g.td, sn),
		fmt.Sprintf("  - when: [{key: source.principal, values: [%q]}]\n    to: [{operation: {ports: [%s]}}]\n", other, portList(g.t.Ports)),
		fmt.Sprintf("  - from: [{source: {principals: [%q]}}]\n    to: [{operation: {ports: [\"%d\"]}}]\n", g.t.Client, port),
		fmt.Sprintf("  - from: [{source: {notPrincipals: [%q]}}]\n", g.t.Client),
	}
	return g.policy(ns, sel, "ALLOW", rules[k%len(rules)]), false
}

// policy writes one AuthorizationPolicy with rules (YAML list items) and returns its ref.
func (g *gen) policy(ns string, sel map[string]string, action, rules string) string {
	name := fmt.Sprintf("scale-%04d", g.n)
	g.n++
	fmt.Fprintf(&g.b, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n  action: %s\n", name, ns, action)
	if len(sel) > 0 {
		g.b.WriteString("  selector:\n    matchLabels:\n")
		keys := make([]string, 0, len(sel))
		for k := range sel {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&g.b, "      %s: %q\n", k, sel[k])
		}
	}
	g.b.WriteString("  rules:\n" + rules + "---\n")
	return ns + "/" + name
}

// block is the k-th /24 of WorkloadIPs (all of it when smaller), from which the client
// does not connect.
func (g *gen) block(k int) netip.Prefix {
	p := g.o.WorkloadIPs.Masked()
	if p.Bits() >= 24 {
		return p
	}
	a, _ := nth(p, 256*(k%(1<<(24-p.Bits())))) // within p by construction
	return netip.PrefixFrom(a, 24)
}

// freePort is p, or the next port that is none of the target's.
func (g *gen) freePort(p int) int {
	for slices.Contains(g.t.Ports, uint16(p)) {
		p++
	}
	return p
}

func portList(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%q", fmt.Sprint(p))
	}
	return strings.Join(s, ", ")
}

// splitPrincipal returns the trust domain and namespace of "td/ns/NS/sa/SA".
func splitPrincipal(p string) (td, ns string, err error) {
	parts := strings.Split(p, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
		return "", "", fmt.Errorf("client principal %q: want td/ns/NAMESPACE/sa/ACCOUNT", p)
	}
	return parts[0], parts[2], nil
}

// nth is the n-th address of the IPv4 prefix p.
func nth(p netip.Prefix, n int) (netip.Addr, error) {
	if !p.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("prefix %s: want IPv4", p)
	}
	if size := 1 << (32 - p.Bits()); n < 0 || n >= size {
		return netip.Addr{}, fmt.Errorf("address %d is outside %s", n, p)
	}
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), nil
}
