package kubee2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

func requireMesh(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	if m == nil {
		t.Fatal("mesh not started")
	}
}

func podAddr(p *netns.Pod) netip.AddrPort { return netip.AddrPortFrom(p.IP, echoPort) }

func lastPeer(t *testing.T, name string) netip.Addr {
	t.Helper()
	peers := echoSrv[name].Peers()
	if len(peers) == 0 {
		t.Fatalf("%s saw no connection", name)
	}
	return peers[len(peers)-1].Addr()
}

func echo(t *testing.T, from *netns.Pod, to netip.AddrPort) {
	t.Helper()
	if err := mesh.Echo(context.Background(), from, to); err != nil {
		t.Fatal(err)
	}
}

func labelNamespace(t *testing.T, value *string) {
	t.Helper()
	patch := []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":null}}}`)
	if value != nil {
		patch = []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"` + *value + `"}}}`)
	}
	if _, err := kc.CoreV1().Namespaces().Patch(context.Background(), appNS, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func labelPod(t *testing.T, name string, value *string) {
	t.Helper()
	patch := []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":null}}}`)
	if value != nil {
		patch = []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"` + *value + `"}}}`)
	}
	if _, err := kc.CoreV1().Pods(appNS).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitCaptured(t *testing.T, p *netns.Pod, want bool) {
	t.Helper()
	if err := m.WaitCaptured(context.Background(), p.Node, p.IP, want); err != nil {
		t.Fatal(err)
	}
}

func ptr(s string) *string { return &s }

// captureWire records the node-to-node wire (the API server's host left out) during fn.
func captureWire(t *testing.T, fn func()) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "wire.pcap")
	c, err := m.Topo.Underlay.Tcpdump(context.Background(), "br0", file, "tcp", "and", "not", "host", mesh.ControlPlaneIP.String())
	if err != nil {
		t.Fatal(err)
	}
	fn()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	return file
}

// Labelling the namespace enrolls its pods live: traffic becomes HBONE over TLS 1.3 on the
// wire; removing the label stops capture and the same traffic is plaintext again.
func TestNamespaceLabelEnrolls(t *testing.T) {
	requireMesh(t)
	marker := []byte("AMBIT-KUBE-MARKER-31d7")
	send := func() {
		payload := bytes.Repeat(marker, 16)
		got, err := mesh.RoundTrip(context.Background(), client, podAddr(server), payload)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("client -> server: %v (%d bytes back)", err, len(got))
		}
	}
	// Not enrolled yet: plaintext.
	waitCaptured(t, client, false)
	v, err := pcap.VerifyWire(captureWire(t, send), marker)
	if err != nil {
		t.Fatal(err)
	}
	if !v.MarkerVisible {
		t.Fatalf("before enrollment the marker should be visible in clear: %s", v)
	}

	labelNamespace(t, ptr("ambient"))
	for _, p := range []*netns.Pod{client, server, server2} {
		waitCaptured(t, p, true)
	}
	v, err = pcap.VerifyWire(captureWire(t, send), marker)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("enrolled: %s", v)
	if !v.Encrypted() {
		t.Fatalf("after labelling the namespace the wire is not proven encrypted: %s", v)
	}
	if got := lastPeer(t, "server"); got != client.IP {
		t.Fatalf("server saw %s, want the client pod %s", got, client.IP)
	}
}

// Runs with the namespace enrolled (after TestNamespaceLabelEnrolls).
func TestServiceNamedTargetPort(t *testing.T) {
	requireMesh(t)
	waitCaptured(t, client, true)
	before := len(echoSrv["server"].Peers()) + len(echoSrv["server2"].Peers())
	for i := 0; i < 4; i++ {
		echo(t, client, echoVIP)
	}
	if after := len(echoSrv["server"].Peers()) + len(echoSrv["server2"].Peers()); after-before != 4 {
		t.Fatalf("%d connections reached the endpoints through the VIP, want 4", after-before)
	}
}

func TestPodOptOut(t *testing.T) {
	requireMesh(t)
	waitCaptured(t, client, true)
	labelPod(t, "client", ptr("none"))
	waitCaptured(t, client, false)
	// The server is still enrolled: its node captures the plaintext inbound (:15006).
	echo(t, client, podAddr(server))
	labelPod(t, "client", nil)
	waitCaptured(t, client, true)
	echo(t, client, podAddr(server))
}

// Restarting the API server neither drops enrollment nor stops the watches: changes made
// after the restart are still applied.
func TestAPIServerRestart(t *testing.T) {
	requireMesh(t)
	waitCaptured(t, client, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Kube.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	// Traffic keeps working while the API server is away.
	echo(t, client, podAddr(server))
	if err := m.Kube.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	waitCaptured(t, client, true)
	labelPod(t, "client", ptr("none"))
	waitCaptured(t, client, false)
	labelPod(t, "client", nil)
	waitCaptured(t, client, true)
	echo(t, client, podAddr(server))
}

// A deleted pod is unenrolled.
func TestPodDeleted(t *testing.T) {
	requireMesh(t)
	waitCaptured(t, server2, true)
	if err := kc.CoreV1().Pods(appNS).Delete(context.Background(), "server2", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitCaptured(t, server2, false)
	// Back for the tests after this one, as a new pod (new UID) in the echo slice.
	ctx := context.Background()
	if err := createPod(ctx, "server2", "server", server2, map[string]string{"app": "echo"}); err != nil {
		t.Fatal(err)
	}
	if err := writeSlice(ctx, []*netns.Pod{server, server2}, []string{"server", "server2"}); err != nil {
		t.Fatal(err)
	}
	waitCaptured(t, server2, true)
}

// ztunnel's service account (RBAC from the Helm chart) reads what it needs and no Secret.
func TestZtunnelCannotReadSecrets(t *testing.T) {
	requireMesh(t)
	ctx := context.Background()
	tok, err := m.Kube.ServiceAccountToken(ctx, mesh.SystemNamespace, mesh.ZtunnelSA, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	zc, err := kubernetes.NewForConfig(m.Kube.TokenConfig(tok))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zc.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		t.Fatalf("ztunnel cannot list pods: %v", err)
	}
	_, err = zc.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("listing secrets as ztunnel: %v, want Forbidden", err)
	}
	_, err = zc.CoreV1().Secrets(mesh.SystemNamespace).Get(ctx, "anything", metav1.GetOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("getting a secret as ztunnel: %v, want Forbidden", err)
	}
}

// The CA, authenticating node1 by its pod-bound token, refuses an identity whose pods all
// run on node2, and issues node1's own.
func TestCANodeScopedKube(t *testing.T) {
	requireMesh(t)
	issue := func(node, sa string) error {
		data, err := os.ReadFile(m.CARoot())
		if err != nil {
			return err
		}
		roots, err := ca.LoadRoots(m.CARoot())
		if err != nil {
			return err
		}
		_ = data
		cl, err := ca.NewClient(ca.ClientConfig{Addr: "unix://" + m.CASocket(), TokenFile: m.TokenFile(node), Roots: roots})
		if err != nil {
			return err
		}
		id := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(mesh.TrustDomain), "/ns/"+appNS+"/sa/"+sa)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, err = cl.Issue(ctx, id, csr)
		return err
	}
	if err := issue("node1", "client"); err != nil {
		t.Fatalf("node1 asking for its own pod's identity: %v", err)
	}
	if err := issue("node1", "server"); !errors.Is(err, identity.ErrNotAuthorized) {
		t.Fatalf("node1 asking for node2's identity: %v, want ErrNotAuthorized", err)
	}
	// The CA's output reaches us through a pipe: give it a moment.
	deadline := time.Now().Add(10 * time.Second)
	for !bytes.Contains([]byte(m.Logs()), []byte("ca identity refused")) {
		if time.Now().After(deadline) {
			t.Fatalf("the refusal was not logged")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Removing the namespace label unenrolls its pods live: the same traffic is plaintext again.
func TestNamespaceUnlabel(t *testing.T) {
	requireMesh(t)
	labelNamespace(t, nil)
	for _, p := range []*netns.Pod{client, server} {
		waitCaptured(t, p, false)
	}
	marker := []byte("AMBIT-KUBE-UNLABELLED-5e2a")
	file := captureWire(t, func() {
		got, err := mesh.RoundTrip(context.Background(), client, podAddr(server), marker)
		if err != nil || !bytes.Equal(got, marker) {
			t.Fatalf("client -> server: %v", err)
		}
	})
	v, err := pcap.VerifyWire(file, marker)
	if err != nil {
		t.Fatal(err)
	}
	if !v.MarkerVisible || v.Encrypted() {
		t.Fatalf("after removing the label the traffic should be plain again: %s", v)
	}
	if got := lastPeer(t, "server"); got != client.IP {
		t.Fatalf("server saw %s, want %s", got, client.IP)
	}
}
