package mesh

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Model is the mesh model a fixture writes for ztunnel and the CA, in the YAML schema of
// docs/configuration.md. Tests edit it and call Mesh.Apply to change the mesh live.
type Model struct {
	Namespaces []Namespace
	Nodes      []Node
	Workloads  []Workload
	Services   []Service
}

type Namespace struct {
	Name   string
	Labels map[string]string
}

type Node struct {
	Name      string
	Addresses []netip.Addr
	Locality  Locality // written only when set
}

type Workload struct {
	Name, Namespace, ServiceAccount, Node string
	IPs                                   []netip.Addr
	Labels                                map[string]string
	Locality                              Locality // written only when set: else the node's
}

// Locality is a node's or workload's region and zone.
type Locality struct{ Region, Zone string }

type ServicePort struct {
	Port, TargetPort uint16
	Name             string // optional; its prefix (http-, tcp-) declares the protocol
}

type Service struct {
	Name, Namespace string
	VIPs            []netip.Addr
	Ports           []ServicePort
	Selector        map[string]string
	Labels          map[string]string
	// TrafficDistribution is Kubernetes' (PreferClose); written only when set.
	TrafficDistribution string
}

// Service returns the named service of namespace ns, or nil.
func (m *Model) Service(ns, name string) *Service {
	for i := range m.Services {
		if m.Services[i].Namespace == ns && m.Services[i].Name == name {
			return &m.Services[i]
		}
	}
	return nil
}

// Namespace returns the named namespace, or nil.
func (m *Model) Namespace(name string) *Namespace {
	for i := range m.Namespaces {
		if m.Namespaces[i].Name == name {
			return &m.Namespaces[i]
		}
	}
	return nil
}

// Workload returns the named workload, or nil.
func (m *Model) Workload(name string) *Workload {
	for i := range m.Workloads {
		if m.Workloads[i].Name == name {
			return &m.Workloads[i]
		}
	}
	return nil
}

// YAML renders the model. It is written by hand (not by the discovery package) so the
// tests exercise the documented schema as a user would write it.
func (m *Model) YAML() string {
	var b strings.Builder
	b.WriteString("namespaces:\n")
	for _, n := range m.Namespaces {
		fmt.Fprintf(&b, "  - name: %s\n", n.Name)
		writeLabels(&b, "    ", n.Labels)
	}
	b.WriteString("nodes:\n")
	for _, n := range m.Nodes {
		fmt.Fprintf(&b, "  - name: %s\n    addresses: [%s]\n", n.Name, joinAddrs(n.Addresses))
		writeLocality(&b, "    ", n.Locality)
	}
	b.WriteString("workloads:\n")
	for _, w := range m.Workloads {
		fmt.Fprintf(&b, "  - name: %s\n    namespace: %s\n    serviceAccount: %s\n    node: %s\n    ips: [%s]\n",
			w.Name, w.Namespace, w.ServiceAccount, w.Node, joinAddrs(w.IPs))
		writeLabels(&b, "    ", w.Labels)
		writeLocality(&b, "    ", w.Locality)
	}
	if len(m.Services) > 0 {
		b.WriteString("services:\n")
		for _, s := range m.Services {
			fmt.Fprintf(&b, "  - name: %s\n    namespace: %s\n    vips: [%s]\n    ports:\n", s.Name, s.Namespace, joinAddrs(s.VIPs))
			for _, p := range s.Ports {
				name := ""
				if p.Name != "" {
					name = "name: " + p.Name + ", "
				}
				fmt.Fprintf(&b, "      - {%sport: %d, targetPort: %d}\n", name, p.Port, p.TargetPort)
			}
			if len(s.Selector) > 0 {
				b.WriteString("    selector:\n")
				for _, k := range sortedKeys(s.Selector) {
					fmt.Fprintf(&b, "      %s: %q\n", k, s.Selector[k])
				}
			}
			writeLabels(&b, "    ", s.Labels)
			if s.TrafficDistribution != "" {
				fmt.Fprintf(&b, "    trafficDistribution: %s\n", s.TrafficDistribution)
			}
		}
	}
	return b.String()
}

func writeLocality(b *strings.Builder, indent string, l Locality) {
	if l != (Locality{}) {
		fmt.Fprintf(b, "%slocality: {region: %q, zone: %q}\n", indent, l.Region, l.Zone)
	}
}

func writeLabels(b *strings.Builder, indent string, labels map[string]string) {
	if len(labels) == 0 {
		return
	}
	fmt.Fprintf(b, "%slabels:\n", indent)
	for _, k := range sortedKeys(labels) {
		fmt.Fprintf(b, "%s  %s: %q\n", indent, k, labels[k])
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
