package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// relayPorts: a relay pair of path P listens on node1 at base+k (where the client pod
// connects) and on node2 at base+100+k, for target k (0 iperf3, 1 echo).
var relayBase = map[string]int{"socat": 20000, "ghostunnel": 21000, "stunnel": 22000, "istio-hbone": 23000, "go-relay": 24000}

// setupPath starts whatever the path needs and checks an echo round trip through it.
func (b *bench) setupPath(ctx context.Context, name string) (*benchPath, error) {
	f := b.fab
	plain := func(ip netip.Addr) (netip.AddrPort, netip.AddrPort) {
		return netip.AddrPortFrom(ip, iperfPort), netip.AddrPortFrom(ip, echoPort)
	}
	var p *benchPath
	switch name {
	case "direct":
		p = &benchPath{name: name, client: f.plainClient}
		p.iperf, p.echo = plain(f.plainServer.IP)
	case "ambit", PathPolicy:
		if f.ambitErr != nil {
			return nil, f.ambitErr
		}
		p = &benchPath{name: name, client: f.meshClient}
		p.iperf, p.echo = plain(f.meshServer.IP)
		for _, node := range []string{"node1", "node2"} {
			pid := f.ztunnelPID(node)
			if pid == 0 {
				return nil, fmt.Errorf("no ztunnel running on %s", node)
			}
			p.ends = append(p.ends, tunnelEnd{pids: []int{pid}, echoPID: pid})
		}
		if f.meshState == nil {
			return nil, errors.New("the mesh cannot switch to the policy case")
		}
		policies := name == PathPolicy
		p.prepare = func(ctx context.Context) error { return f.meshState(ctx, policies) }
		if err := p.prepare(ctx); err != nil {
			return nil, err
		}
	default:
		var err error
		if p, err = b.startRelays(ctx, name); err != nil {
			return nil, err
		}
	}
	var opened float64
	if isAmbit(name) && f.connsOpened != nil {
		opened, _ = f.connsOpened(ctx)
	}
	if err := echoCheck(ctx, p); err != nil {
		return nil, err
	}
	if isAmbit(name) && f.connsOpened != nil {
		// The echo must have gone through ztunnel, not around it.
		now, err := f.connsOpened(ctx)
		if err != nil {
			return nil, fmt.Errorf("read node1 ztunnel metrics: %w", err)
		}
		if now <= opened {
			return nil, errors.New("the echo check did not go through node1's ztunnel (istio_tcp_connections_opened_total did not grow): traffic is not captured")
		}
	}
	if name == PathPolicy {
		note, err := f.checkPolicies(ctx)
		if err != nil {
			return nil, fmt.Errorf("policy case: %w", err)
		}
		p.note = note
	}
	return p, nil
}

// startRelays starts a relay pair per target in the node namespaces, as a node tunnel
// would run: the client pod -> node1 relay -> node2 relay -> the plain server pod.
func (b *bench) startRelays(ctx context.Context, name string) (*benchPath, error) {
	f := b.fab
	n1, n2 := f.topo.Nodes[0], f.topo.Nodes[1]
	base := relayBase[name]
	p := &benchPath{name: name, client: f.plainClient, ends: make([]tunnelEnd, 2)}
	if name == "socat" {
		p.ends[ClientEnd].children, p.ends[ServerEnd].children = true, true
		p.noMem = "idle-connection memory not measured: socat forks a process per connection"
	}
	for k, port := range []uint16{iperfPort, echoPort} {
		target := netip.AddrPortFrom(f.plainServer.IP, port)
		front := netip.AddrPortFrom(n1.IP, uint16(base+k))
		back := netip.AddrPortFrom(n2.IP, uint16(base+100+k))
		srvArgs, cliArgs, err := b.relayArgs(name, k, front, back, target)
		if err != nil {
			return nil, err
		}
		for _, side := range []struct {
			node   *netns.Node
			args   []string
			listen netip.AddrPort
		}{{n1, cliArgs, front}, {n2, srvArgs, back}} {
			proc, err := f.topo.Start(side.node.Command(context.Background(), side.args[0], side.args[1:]...))
			if err != nil {
				return nil, err
			}
			if err := waitListening(ctx, side.node.NS, side.listen); err != nil {
				return nil, fmt.Errorf("%s relay on %s: %w\n%s", name, side.node.Name, err, proc.Output())
			}
			end := &p.ends[ClientEnd]
			if side.node == n2 {
				end = &p.ends[ServerEnd]
			}
			end.pids = append(end.pids, proc.Pid())
			if port == echoPort {
				end.echoPID = proc.Pid()
			}
		}
		if port == iperfPort {
			p.iperf = front
		} else {
			p.echo = front
		}
	}
	return p, nil
}

// relayArgs returns the command lines of the server-side (node2) and client-side (node1)
// relays for target k. TLS peers use the run's throw-away ECDSA P-256 certificates, TLS 1.3
// and, where configurable, AES-128-GCM; every peer sets TCP_NODELAY (Go does by default).
func (b *bench) relayArgs(name string, k int, front, back, target netip.AddrPort) (srv, cli []string, err error) {
	t, c := b.tools, b.certs
	switch name {
	case "socat":
		listen := func(a netip.AddrPort) string {
			return fmt.Sprintf("TCP4-LISTEN:%d,bind=%s,reuseaddr,fork,backlog=4096,nodelay", a.Port(), a.Addr())
		}
		srv = []string{t.socat, listen(back), fmt.Sprintf("TCP4:%s,nodelay", target)}
		cli = []string{t.socat, listen(front), fmt.Sprintf("TCP4:%s,nodelay", back)}
	case "ghostunnel":
		// --quiet=conns: no log line per connection (the other peers do not log them either).
		common := []string{"--quiet=conns", "--cacert", c.CA}
		srv = append([]string{t.ghostunnel, "server", "--listen", back.String(), "--target", target.String(), "--unsafe-target",
			"--cert", c.ServerCert, "--key", c.ServerKey, "--allow-all"}, common...)
		cli = append([]string{t.ghostunnel, "client", "--listen", front.String(), "--target", back.String(), "--unsafe-listen",
			"--cert", c.ClientCert, "--key", c.ClientKey, "--override-server-name", serverName}, common...)
	case "stunnel":
		tls := "sslVersion = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\nCAfile = " + c.CA + "\nverifyChain = yes\n" +
			"socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
		global := "foreground = yes\npid =\ndebug = warning\n"
		srvConf := fmt.Sprintf("%s[bench]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\n%s",
			global, back, target, c.ServerCert, c.ServerKey, tls)
		cliConf := fmt.Sprintf("%s[bench]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\ncheckHost = %s\n%s",
			global, front, back, c.ClientCert, c.ClientKey, serverName, tls)
		sf, cf := filepath.Join(b.dir, fmt.Sprintf("stunnel-server-%d.conf", k)), filepath.Join(b.dir, fmt.Sprintf("stunnel-client-%d.conf", k))
		if err := writeFiles(map[string]string{sf: srvConf, cf: cliConf}); err != nil {
			return nil, nil, err
		}
		srv, cli = []string{t.stunnel, sf}, []string{t.stunnel, cf}
	case "go-relay":
		srv = []string{t.goRelay, "-listen", back.String(), "-target", target.String()}
		cli = []string{t.goRelay, "-listen", front.String(), "-target", back.String()}
	case "istio-hbone":
		srv = []string{t.istioHBONE, "-mode", "server", "-listen", back.String(), "-cert", c.ServerCert, "-key", c.ServerKey, "-ca", c.CA}
		cli = []string{t.istioHBONE, "-mode", "client", "-listen", front.String(), "-proxy", back.String(), "-target", target.String(),
			"-cert", c.ClientCert, "-key", c.ClientKey, "-ca", c.CA, "-server-name", serverName}
	default:
		return nil, nil, fmt.Errorf("unknown relay %q", name)
	}
	return srv, cli, nil
}

func writeFiles(files map[string]string) error {
	var errs []error
	for name, body := range files {
		if err := os.WriteFile(name, []byte(body), 0o600); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fabric is the topology the paths run on, with or without Ambit.
type fabric struct {
	topo                     *netns.Topology
	plainClient, plainServer *netns.Pod // namespace "plain": never captured
	meshClient, meshServer   *netns.Pod // namespace "mesh": enrolled
	ztunnelPID               func(node string) int
	connsOpened              func(context.Context) (float64, error) // node1 ztunnel's counter
	// profile saves a CPU profile of node's ztunnel over d to file (nil without the mesh).
	profile func(ctx context.Context, node *netns.Node, d time.Duration, file string) error
	// meshState puts the mesh in the ambit path's state or, with policies, in the
	// ambit-policy path's; checkPolicies verifies the latter on the running ztunnels and
	// describes it (both nil without the mesh).
	meshState     func(ctx context.Context, policies bool) error
	checkPolicies func(ctx context.Context) (string, error)
	// l7 is the L7 case's part of the mesh (nil unless -tests has l7 and the mesh runs).
	l7       *l7Fabric
	ambitErr error // why Ambit is not available
	close    func() error
}

// podRoles names the pods: on each node pod0 is enrolled and pod1 is plain.
func (f *fabric) podRoles() {
	n1, n2 := f.topo.Nodes[0], f.topo.Nodes[1]
	f.meshClient, f.plainClient = n1.Pods[0], n1.Pods[1]
	f.meshServer, f.plainServer = n2.Pods[0], n2.Pods[1]
}

func isPlainPod(name string) bool { return strings.HasSuffix(name, "-pod1") }
