package mesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/netns"
)

// WaypointArgs is the command line of waypoint ns/name running in pod p (local mode:
// the model and manifests the ztunnels read, a certificate from the CA with p's node's
// token, which may hold the identities of the pods on that node). DataPathEnv picks its
// -datapath as it does ztunnel's.
func (m *Mesh) WaypointArgs(p *netns.Pod, ns, name string) []string {
	var dp []string
	if v := os.Getenv(DataPathEnv); v != "" {
		dp = []string{"-datapath", v}
	}
	return append(dp,
		"-name", name, "-namespace", ns, "-node", p.Node.Name,
		"-trust-domain", TrustDomain,
		"-listen", p.IP.String()+":15008",
		"-model", m.ModelPath(), "-policies", m.PolicyDir(),
		"-ca-addr", "unix://"+m.CASocket(),
		"-ca-token-file", m.TokenFile(p.Node.Name),
		"-ca-root-file", m.CARoot(),
		"-drain-timeout", "1s",
	)
}

// StartWaypoint runs waypoint ns/name in pod p (a workload of the model labelled
// gateway.networking.k8s.io/gateway-name=name) and waits until it is ready.
func (m *Mesh) StartWaypoint(ctx context.Context, p *netns.Pod, ns, name string) error {
	cmd := p.Command(context.Background(), filepath.Join(m.Bin, "waypoint"), m.WaypointArgs(p, ns, name)...)
	proc, err := m.Topo.Start(cmd)
	if err != nil {
		return fmt.Errorf("start waypoint in %s: %w", p.Name, err)
	}
	m.mu.Lock()
	if m.wp == nil {
		m.wp = map[string]*netns.Proc{}
	}
	m.wp[p.Name] = proc
	m.mu.Unlock()
	client := HTTPClient(p.NS)
	return waitFor(ctx, proc, 30*time.Second, func() bool {
		resp, err := client.Get("http://127.0.0.1:15021/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "waypoint in "+p.Name)
}

// Waypoint returns the waypoint process running in the named pod, or nil.
func (m *Mesh) Waypoint(pod string) *netns.Proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wp[pod]
}

// StopWaypoint stops the waypoint running in the named pod.
func (m *Mesh) StopWaypoint(pod string) error {
	m.mu.Lock()
	p := m.wp[pod]
	delete(m.wp, pod)
	m.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no waypoint running in %s", pod)
	}
	err := p.Stop()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil
	}
	return err
}

// ServingIdentities returns the URI SANs of the certificate a TLS server (a waypoint's or
// ztunnel's :15008) presents at addr, dialed from pod p. It verifies nothing and sends no
// client certificate: it only looks.
func ServingIdentities(ctx context.Context, p *netns.Pod, addr string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := p.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	var leaf *x509.Certificate
	conn := tls.Client(raw, &tls.Config{
		InsecureSkipVerify: true, // looked at below, not trusted
		NextProtos:         []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				leaf = cs.PeerCertificates[0]
			}
			return nil
		},
	})
	// The server may refuse a client without a certificate; its own was seen first.
	_ = conn.HandshakeContext(ctx)
	if leaf == nil {
		return nil, fmt.Errorf("%s presented no certificate", addr)
	}
	var ids []string
	for _, u := range leaf.URIs {
		ids = append(ids, u.String())
	}
	return ids, nil
}

// WaypointGateway is the Gateway that declares waypoint ns/name, as Istio users write
// it: class istio-waypoint, one HBONE listener on 15008.
func WaypointGateway(ns, name string) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %s
  namespace: %s
spec:
  gatewayClassName: %s
  listeners:
  - {name: mesh, port: %d, protocol: HBONE}
`, name, ns, discovery.DefaultWaypointClass, discovery.WaypointPort)
}
