//go:build !nomesh

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/policy"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/scale"
	"github.com/ambitmesh/ambit/ztunnel"
)

// policyCaseWorkloads is the size of the ambit-policy path's model, the topology's own
// workloads included.
const policyCaseWorkloads = 10000

// policyFile is the policy case's file in the mesh's policy directory.
const policyFile = "scale.yaml"

// policyCase switches a mesh between the ambit path's model (the topology's pods, no
// policy) and the ambit-policy path's (the same pods among thousands of synthetic
// workloads, and scale's AuthorizationPolicies).
type policyCase struct {
	m         *mesh.Mesh
	base, big *mesh.Model
	s         *scale.Mesh
	dst       mesh.Workload // the measured destination
	dstNode   *netns.Node
	plain     *netns.Pod     // a client outside the mesh, which the policies refuse
	echo      netip.AddrPort // the destination's echo server
	on        bool
}

// newPolicyCase builds the policy case around the connections from client to server;
// plain is a pod outside the mesh.
func newPolicyCase(m *mesh.Mesh, client, server, plain *netns.Pod) (*policyCase, error) {
	base := m.Model
	src, dst := base.Workload(client.Name), base.Workload(server.Name)
	if src == nil || dst == nil {
		return nil, fmt.Errorf("no workloads %s and %s in the model", client.Name, server.Name)
	}
	o := scale.Default()
	o.Workloads = policyCaseWorkloads - len(base.Workloads)
	s, err := scale.Generate(scale.Target{
		Namespace: dst.Namespace, Labels: dst.Labels, Ports: []uint16{echoPort, iperfPort},
		Client: mesh.TrustDomain + "/ns/" + src.Namespace + "/sa/" + src.ServiceAccount,
	}, o)
	if err != nil {
		return nil, err
	}
	var node *netns.Node
	for _, n := range m.Topo.Nodes {
		if n.Name == dst.Node {
			node = n
		}
	}
	if node == nil {
		return nil, fmt.Errorf("no node %s in the topology", dst.Node)
	}
	return &policyCase{m: m, base: base, big: scaledModel(base, s), s: s, dst: *dst, dstNode: node,
		plain: plain, echo: netip.AddrPortFrom(server.IP, echoPort)}, nil
}

// scaledModel is base with s's namespaces (enrolled), nodes and workloads added.
func scaledModel(base *mesh.Model, s *scale.Mesh) *mesh.Model {
	m := &mesh.Model{
		Namespaces: slices.Clone(base.Namespaces), Nodes: slices.Clone(base.Nodes),
		Workloads: slices.Clone(base.Workloads), Services: slices.Clone(base.Services),
	}
	for _, ns := range s.Namespaces {
		m.Namespaces = append(m.Namespaces, mesh.Namespace{Name: ns, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}})
	}
	for _, n := range s.Nodes {
		m.Nodes = append(m.Nodes, mesh.Node{Name: n.Name, Addresses: []netip.Addr{n.IP}})
	}
	for _, w := range s.Workloads {
		m.Workloads = append(m.Workloads, mesh.Workload{Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Node: w.Node, IPs: []netip.Addr{w.IP}, Labels: maps.Clone(w.Labels)})
	}
	return m
}

// set writes the model and policies of the ambit path (on false) or the ambit-policy
// path and waits until every ztunnel has them; a no-op when they are in force already.
func (pc *policyCase) set(ctx context.Context, on bool) error {
	if pc.on == on {
		return nil
	}
	file := filepath.Join(pc.m.PolicyDir(), policyFile)
	model, policies := pc.base, 0
	if on {
		model, policies = pc.big, pc.s.Policies
		tmp := filepath.Join(pc.m.PolicyDir(), "."+policyFile) // dot files are not read
		if err := os.WriteFile(tmp, []byte(pc.s.Manifests), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, file); err != nil {
			return err
		}
	} else if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	pc.m.Model = model
	if err := pc.m.Apply(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, n := range ztunnelNodes(pc.m) {
		if err := waitDump(ctx, pc.m, n, func(d *ztunnel.ConfigDump) bool {
			return len(d.Workloads) == len(model.Workloads) && len(d.Policies) == policies
		}); err != nil {
			return fmt.Errorf("%s: model of %d workloads and %d policies not in force: %w", n.Name, len(model.Workloads), policies, err)
		}
	}
	pc.on = on
	for _, n := range ztunnelNodes(pc.m) {
		if err := waitOneP(ctx, pc.m, n); err != nil {
			progress("  %s: ztunnel still on more than one P after the switch: %v", n.Name, err)
		}
	}
	return nil
}

// waitOneP waits until node's ztunnel runs on one P again, as it did before the switch:
// its adaptive scheduler (-gomaxprocs=auto) takes the runtime's default for the CPU
// burst of a reload (and of the dumps read meanwhile) and gives it back after 2 s of
// light load, and a measurement started before that runs on two Ps (a single stream then
// cost the server end a fifth to a third more CPU per GB). The scaler starts on one P and counts its
// changes, so an even count is one P; without the counter (a fixed -gomaxprocs) there is
// nothing to wait for.
func waitOneP(ctx context.Context, m *mesh.Mesh, n *netns.Node) error {
	const changes = "ambit_gomaxprocs_changes_total"
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		text, err := m.Metrics(ctx, n)
		if err == nil && (!strings.Contains(text, changes) || int(sumMetric(text, changes))%2 == 0) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ztunnelNodes are the nodes of m that run a ztunnel (with the L7 case, node3 has none).
func ztunnelNodes(m *mesh.Mesh) []*netns.Node {
	var out []*netns.Node
	for _, n := range m.Topo.Nodes {
		if m.Ztunnel(n.Name) != nil {
			out = append(out, n)
		}
	}
	return out
}

func waitDump(ctx context.Context, m *mesh.Mesh, n *netns.Node, ok func(*ztunnel.ConfigDump) bool) error {
	for {
		d, err := m.Dump(ctx, n)
		if err == nil && ok(d) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// check verifies, with the policy case in force, that the destination's ztunnel has
// every policy valid and exactly the expected ones applying to the destination, that the
// echo check was admitted by the last of them, and that a plaintext client is refused by
// policy; it describes the case for the report.
func (pc *policyCase) check(ctx context.Context) (string, error) {
	if !pc.on {
		return "", errors.New("the policy case is not in force")
	}
	node := pc.dstNode
	d, err := pc.m.Dump(ctx, node)
	if err != nil {
		return "", err
	}
	if len(d.PolicyProblems) > 0 {
		return "", fmt.Errorf("%s: policy problems: %s", node.Name, strings.Join(d.PolicyProblems, "; "))
	}
	action := map[string]string{}
	for _, p := range d.Policies {
		if p.Invalid != "" {
			return "", fmt.Errorf("%s: %s is invalid: %s", node.Name, p.Name, p.Invalid)
		}
		action[p.Name] = p.Action
	}
	var applying []string
	for _, w := range d.Workloads {
		if w.Namespace == pc.dst.Namespace && w.Name == pc.dst.Name {
			for _, ref := range w.Policies {
				if name, ok := strings.CutPrefix(ref, policy.KindAuthorization+" "); ok {
					applying = append(applying, name)
				}
			}
		}
	}
	if !slices.Equal(applying, pc.s.Applying) {
		return "", fmt.Errorf("%s: %d policies apply to %s/%s, want the %d of the case", node.Name, len(applying), pc.dst.Namespace, pc.dst.Name, len(pc.s.Applying))
	}
	deny := 0
	for _, ref := range applying {
		if action[ref] == policy.ActionDeny.String() {
			deny++
		}
	}
	// The echo check's access-log line (written in batches) names the deciding policy.
	zt, decided := pc.m.Ztunnel(node.Name), "AuthorizationPolicy "+pc.s.Admit+" rule 0"
	for deadline := time.Now().Add(5 * time.Second); zt == nil || !strings.Contains(zt.Output(), decided); time.Sleep(100 * time.Millisecond) {
		if zt == nil || time.Now().After(deadline) {
			return "", fmt.Errorf("%s logged no connection decided by %q", node.Name, decided)
		}
	}
	before, err := pc.denied(ctx, node)
	if err != nil {
		return "", err
	}
	if err := refused(ctx, pc.plain, pc.echo); err != nil {
		return "", err
	}
	if after, err := pc.denied(ctx, node); err != nil || after <= before {
		return "", fmt.Errorf("%s counted no refusal by policy of the plaintext client (%v -> %v, %v)", node.Name, before, after, err)
	}
	return fmt.Sprintf("%d workloads in the model and %d AuthorizationPolicies in force (tests/scale); %d apply to the destination %s/%s (%d DENY), "+
		"none matches the client but the last, %s, which admits it; checked on %s's /config_dump, access log and a refused plaintext client",
		len(d.Workloads), len(d.Policies), len(applying), pc.dst.Namespace, pc.dst.Name, deny, pc.s.Admit, node.Name), nil
}

// denied is node's count of connections refused by policy.
func (pc *policyCase) denied(ctx context.Context, node *netns.Node) (float64, error) {
	text, err := pc.m.Metrics(ctx, node)
	if err != nil {
		return 0, err
	}
	return sumMetric(text, "istio_tcp_connections_failed_total", `response_flags="DENY"`), nil
}

// refused connects from client to addr and checks that nothing comes back.
func refused(ctx context.Context, client *netns.Pod, addr netip.AddrPort) error {
	c, err := dialFrom(ctx, client.NS, addr, 2*time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return nil
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err == nil {
		return fmt.Errorf("plaintext from %s to %s was echoed: the policies are not enforced", client.Name, addr)
	}
	return nil
}
