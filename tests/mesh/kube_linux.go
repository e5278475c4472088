package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
)

// In Kubernetes mode the API server runs in the underlay namespace at ControlPlaneIP, where
// every node reaches it over its uplink (tcpdump filters must leave this host out).
var ControlPlaneIP = netip.MustParseAddr("198.18.0.254")

// Namespace, service accounts and audience as the Helm chart installs them.
const (
	SystemNamespace  = "ambit-system"
	ZtunnelSA        = "ambit-ztunnel"
	CASA             = "ambit-ca"
	CAAudience       = "ambit-ca"
	RootConfigMap    = "ambit-ca-root"
	ztunnelPodPrefix = "ztunnel-"
)

// chartKinds are the chart objects a test cluster needs: the identities and permissions
// the real install gives ztunnel and the CA (workloads run as processes, not pods), and
// Istio's security CRDs.
var chartKinds = map[string]schema.GroupVersionResource{
	"CustomResourceDefinition": {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"ServiceAccount":           {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":              {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":       {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Role":                     {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"RoleBinding":              {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

func (m *Mesh) startKube(ctx context.Context) error {
	bins, err := kubetest.EnsureBinaries(ctx)
	if err != nil {
		return err
	}
	ul := m.Topo.Underlay
	if out, err := ul.Command(ctx, "ip", "addr", "add", ControlPlaneIP.String()+"/24", "dev", "br0").CombinedOutput(); err != nil {
		return fmt.Errorf("add control-plane address: %w: %s", err, out)
	}
	c, err := kubetest.Start(ctx, kubetest.Options{
		Dir: filepath.Join(m.Dir, "kube"), BindAddress: ControlPlaneIP,
		Command: ul.Command, Dial: ul.DialContext, Binaries: bins,
	})
	if err != nil {
		return err
	}
	m.Kube = c
	if err := m.applyChart(ctx, bins.Helm); err != nil {
		return err
	}
	client := c.Client()
	// ztunnel's credentials: an API token for its service account, and per node a CA token
	// bound to a pod on that node, as the DaemonSet's projected token would be.
	apiToken, err := c.ServiceAccountToken(ctx, SystemNamespace, ZtunnelSA, "", 0)
	if err != nil {
		return err
	}
	if err := c.WriteKubeconfig(filepath.Join(m.Dir, "ztunnel.kubeconfig"), apiToken); err != nil {
		return err
	}
	caToken, err := c.ServiceAccountToken(ctx, SystemNamespace, CASA, "", 0)
	if err != nil {
		return err
	}
	if err := c.WriteKubeconfig(filepath.Join(m.Dir, "ca.kubeconfig"), caToken); err != nil {
		return err
	}
	for _, n := range m.Topo.Nodes {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: ztunnelPodPrefix + n.Name, Namespace: SystemNamespace},
			Spec: corev1.PodSpec{NodeName: n.Name, ServiceAccountName: ZtunnelSA, HostNetwork: true,
				Containers: []corev1.Container{{Name: "ztunnel", Image: "ambit/ztunnel"}}},
		}
		if _, err := client.CoreV1().Pods(SystemNamespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s: %w", pod.Name, err)
		}
		tok, err := m.CAToken(ctx, n.Name)
		if err != nil {
			return err
		}
		if err := os.WriteFile(m.TokenFile(n.Name), []byte(tok), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// CAToken mints the node's CA credential: a token of ztunnel's service account for the CA
// audience, bound to the node's ztunnel pod.
func (m *Mesh) CAToken(ctx context.Context, node string) (string, error) {
	client := m.Kube.Client()
	pod, err := client.CoreV1().Pods(SystemNamespace).Get(ctx, ztunnelPodPrefix+node, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	tr, err := client.CoreV1().ServiceAccounts(SystemNamespace).CreateToken(ctx, ZtunnelSA, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:      []string{CAAudience},
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("ca token for %s: %w", node, err)
	}
	return tr.Status.Token, nil
}

// PodCAToken writes the CA credential of Kubernetes pod ns/pod, as its projected token
// would be: a token of the pod's service account for the CA audience, bound to the pod.
// It returns the file's path.
func (m *Mesh) PodCAToken(ctx context.Context, ns, pod string) (string, error) {
	client := m.Kube.Client()
	p, err := client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:      []string{CAAudience},
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("ca token for pod %s/%s: %w", ns, pod, err)
	}
	path := filepath.Join(m.Dir, ns+"-"+pod+".token")
	return path, os.WriteFile(path, []byte(tr.Status.Token), 0o600)
}

// applyChart renders install/helm/ambit (with istioCRDs.install and gatewayAPICRDs.install) and creates its
// service accounts, RBAC and CRDs, then waits until the API server serves the CRDs.
func (m *Mesh) applyChart(ctx context.Context, helm string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, helm, "template", "ambit", filepath.Join(root, "install", "helm", "ambit"),
		"--namespace", SystemNamespace, "--set", "istioCRDs.install=true,gatewayAPICRDs.install=true").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("helm template: %w: %s", err, ee.Stderr)
		}
		return fmt.Errorf("helm template: %w", err)
	}
	if _, err := m.Kube.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: SystemNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	dyn, err := dynamic.NewForConfig(m.Kube.AdminConfig)
	if err != nil {
		return err
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	applied := 0
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("decode rendered chart: %w", err)
		}
		gvr, ok := chartKinds[obj.GetKind()]
		if !ok {
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if obj.GetNamespace() != "" || obj.GetKind() == "ServiceAccount" || obj.GetKind() == "Role" || obj.GetKind() == "RoleBinding" {
			if obj.GetNamespace() == "" {
				obj.SetNamespace(SystemNamespace)
			}
			ri = dyn.Resource(gvr).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Create(ctx, &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		applied++
	}
	if applied == 0 {
		return errors.New("the rendered chart has no RBAC objects")
	}
	if err := m.waitServed(ctx, "security.istio.io/v1"); err != nil {
		return err
	}
	return m.waitServed(ctx, "gateway.networking.k8s.io/v1")
}

// waitServed waits until the API server serves groupVersion (a new CRD's).
func (m *Mesh) waitServed(ctx context.Context, groupVersion string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		_, err := m.Kube.Client().Discovery().ServerResourcesForGroupVersion(groupVersion)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API server does not serve %s: %w", groupVersion, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// policyResources are the API resources of the policy kinds.
var policyResources = map[string]schema.GroupVersionResource{
	"AuthorizationPolicy": {Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
	"PeerAuthentication":  {Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
}

// kubePolicies creates (create) or deletes the policy objects of manifests through
// the API server, as kubectl apply and delete would.
func (m *Mesh) kubePolicies(ctx context.Context, manifests string, create bool) error {
	dyn, err := dynamic.NewForConfig(m.Kube.AdminConfig)
	if err != nil {
		return err
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader([]byte(manifests)), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decode policy manifests: %w", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvr, ok := policyResources[obj.GetKind()]
		if !ok {
			return fmt.Errorf("%s %s: not a policy kind", obj.GetKind(), obj.GetName())
		}
		if obj.GetNamespace() == "" {
			obj.SetNamespace("default")
		}
		ri := dyn.Resource(gvr).Namespace(obj.GetNamespace())
		if create {
			_, err = ri.Create(ctx, &obj, metav1.CreateOptions{})
		} else if err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{}); apierrors.IsNotFound(err) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		}
	}
}

// WriteServiceAccountKubeconfig writes a kubeconfig for service account ns/sa (an API
// token of its own, so RBAC applies as to a pod running as it) and returns its path.
func (m *Mesh) WriteServiceAccountKubeconfig(ctx context.Context, ns, sa string) (string, error) {
	tok, err := m.Kube.ServiceAccountToken(ctx, ns, sa, "", 0)
	if err != nil {
		return "", err
	}
	path := filepath.Join(m.Dir, ns+"-"+sa+".kubeconfig")
	return path, m.Kube.WriteKubeconfig(path, tok)
}

// StartKubeWaypoint runs waypoint ns/name as service account sa in pod p in Kubernetes
// mode: the model from the API server with kubeconfig, a certificate from the CA with
// the token in caTokenFile (from PodCAToken: the waypoint pod's own, as the
// controller's Deployment mounts it). It waits until the waypoint is ready;
// StopWaypoint stops it.
func (m *Mesh) StartKubeWaypoint(ctx context.Context, p *netns.Pod, ns, name, sa, kubeconfig, caTokenFile string) error {
	args := []string{"-kubeconfig", kubeconfig, "-service-account", sa}
	local := m.WaypointArgs(p, ns, name)
	for i := 0; i < len(local); i++ {
		switch local[i] {
		case "-model", "-policies":
			i++ // and its value
			continue
		case "-ca-token-file":
			args = append(args, local[i], caTokenFile)
			i++
			continue
		}
		args = append(args, local[i])
	}
	proc, err := m.Topo.Start(p.Command(context.Background(), filepath.Join(m.Bin, "waypoint"), args...))
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

// RoutePodsToControlPlane lets pods reach the API server (a waypoint pod reads the model
// itself): the control-plane host gets a route to each node's pod CIDR via that node.
// Idempotent.
func (m *Mesh) RoutePodsToControlPlane(ctx context.Context) error {
	for _, n := range m.Topo.Nodes {
		out, err := m.Topo.Underlay.Command(ctx, "ip", "route", "replace", n.PodCIDR.String(), "via", n.IP.String()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("route %s via %s: %w: %s", n.PodCIDR, n.IP, err, out)
		}
	}
	return nil
}
