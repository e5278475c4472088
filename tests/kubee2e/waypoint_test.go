package kubee2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The waypoint of these tests: apps/waypoint, its pod on node1's second netns pod, for
// service "web" (HTTP on server and server2, port 8081; echo's backends are TCP echo
// servers, which a waypoint would parse as HTTP by the port name).
const (
	waypointName = "waypoint"
	webPort      = 8081
)

var webVIP = netip.MustParseAddrPort("198.19.0.11:80")

func gatewayClient(t *testing.T) gwclient.Interface {
	t.Helper()
	c, err := gwclient.NewForConfig(m.Kube.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// webHits are the paths the web servers answered.
type webHits struct {
	mu    sync.Mutex
	paths map[string]bool
}

func (h *webHits) saw(p string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.paths[p]
}

// createPodService creates Service name of apps (vip, HTTP to port) with an
// EndpointSlice of the server pods, deleted at cleanup.
func createPodService(t *testing.T, name string, vip netip.AddrPort, targetPort int32, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS, Labels: labels},
		Spec: corev1.ServiceSpec{
			ClusterIP: vip.Addr().String(), Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "http", Port: int32(vip.Port()), TargetPort: intstr.FromInt32(targetPort)}},
		},
	}
	if _, err := kc.CoreV1().Services(appNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready, port, portName := true, targetPort, "http"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Namespace: appNS, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
	}
	for _, pn := range []string{"server", "server2"} {
		pod, err := kc.CoreV1().Pods(appNS).Get(ctx, pn, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{pod.Status.PodIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: appNS, Name: pn, UID: pod.UID},
		})
	}
	if _, err := kc.DiscoveryV1().EndpointSlices(appNS).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kc.DiscoveryV1().EndpointSlices(appNS).Delete(ctx, slice.Name, metav1.DeleteOptions{})
		_ = kc.CoreV1().Services(appNS).Delete(ctx, svc.Name, metav1.DeleteOptions{})
	})
}

// withWeb serves HTTP on the server pods (answering with the pod's name and the client
// address it saw) behind service web, all undone at cleanup.
func withWeb(t *testing.T) *webHits {
	t.Helper()
	seen := &webHits{paths: map[string]bool{}}
	for _, p := range []*netns.Pod{server, server2} {
		l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, webPort).String())
		if err != nil {
			t.Fatal(err)
		}
		name := p.Name
		srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			seen.mu.Lock()
			seen.paths[r.URL.Path] = true
			seen.mu.Unlock()
			fmt.Fprintf(rw, "pod=%s from=%s path=%s", name, r.RemoteAddr, r.URL.Path)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	createPodService(t, "web", webVIP, webPort, nil)
	return seen
}

// enroll labels namespace apps ambient for the test.
func enroll(t *testing.T) {
	t.Helper()
	labelNamespace(t, ptr("ambient"))
	t.Cleanup(func() { labelNamespace(t, nil) })
	for _, p := range []*netns.Pod{client, server, server2} {
		waitCaptured(t, p, true)
	}
}

// createWaypoint creates the Gateway apps/waypoint of the waypoint class, deleted at
// cleanup unless the test did.
func createWaypoint(t *testing.T, gc gwclient.Interface) *gatewayv1.Gateway {
	t.Helper()
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: waypointName, Namespace: appNS},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: discovery.DefaultWaypointClass,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	created, err := gc.GatewayV1().Gateways(appNS).Create(context.Background(), gw, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := gc.GatewayV1().Gateways(appNS).Delete(context.Background(), waypointName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
	return created
}

// startWaypointPod stands in for the kubelet: pod waypoint-0 of the waypoint (label
// gateway-name, opted out of capture, service account sa) on node1's second netns pod,
// Ready, running the real waypoint process in Kubernetes mode with kubeconfig and its
// pod's own CA token (as its projected token would be).
func startWaypointPod(t *testing.T, sa, kubeconfig string) *netns.Pod {
	t.Helper()
	ctx := context.Background()
	p := m.Topo.Nodes[0].Pods[1]
	if err := m.RoutePodsToControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{discovery.LabelGatewayName: waypointName, "istio.io/dataplane-mode": "none"}
	if err := createPod(ctx, "waypoint-0", sa, p, labels); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		if err := kc.CoreV1().Pods(appNS).Delete(ctx, "waypoint-0", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Error(err)
		}
	})
	pod, err := kc.CoreV1().Pods(appNS).Get(ctx, "waypoint-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := kc.CoreV1().Pods(appNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := m.PodCAToken(ctx, appNS, "waypoint-0")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.StartKubeWaypoint(ctx, p, appNS, waypointName, sa, kubeconfig, token); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.StopWaypoint(p.Name) })
	return p
}

// bindWeb labels service web with istio.io/use-waypoint for the test.
func bindWeb(t *testing.T) {
	t.Helper()
	patch := func(v string) {
		if _, err := kc.CoreV1().Services(appNS).Patch(context.Background(), "web", types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"`+discovery.LabelUseWaypoint+`":`+v+`}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	patch(`"` + waypointName + `"`)
	t.Cleanup(func() { patch("null") })
}

// waitBound waits until both nodes' ztunnels send service web through apps/waypoint and
// know it with pods waypoint pods.
func waitBound(t *testing.T, pods int) {
	t.Helper()
	waitServiceBound(t, "web", pods)
}

// waitServiceBound is waitBound for service svc of namespace apps.
func waitServiceBound(t *testing.T, svc string, pods int) {
	t.Helper()
	host := svc + "." + appNS + ".svc.cluster.local"
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range m.Topo.Nodes {
		for {
			bound, got := false, -1
			if d, err := m.Dump(context.Background(), n); err == nil {
				for _, s := range d.Services {
					bound = bound || (s.Hostname == host && s.Waypoint == appNS+"/"+waypointName)
				}
				for _, w := range d.Waypoints {
					if w.Name == appNS+"/"+waypointName {
						got = len(w.Pods)
					}
				}
			}
			if bound && got == pods {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s bound %v, waypoint pods %d; want bound with %d", n.Name, svc, bound, got, pods)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// getWeb sends GET path to service web from the client pod on a connection of its own.
func getWeb(path string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.DialContext, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + webVIP.String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitWeb retries GET path until it is answered 200, and returns the body.
func waitWeb(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body, err := getWeb(path)
		if err == nil && code == 200 {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s through the waypoint: %d %q %v\n%s", path, code, body, err, m.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// bindClusterRole binds the chart's ambit-waypoint ClusterRole to apps/sa.
func bindClusterRole(t *testing.T, sa string) {
	t.Helper()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-waypoint-" + sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "ambit-waypoint"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: appNS, Name: sa}},
	}
	if _, err := kc.RbacV1().ClusterRoleBindings().Create(context.Background(), crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kc.RbacV1().ClusterRoleBindings().Delete(context.Background(), crb.Name, metav1.DeleteOptions{})
	})
}

// A waypoint declared as a Gateway in the API server, run by a Ready pod whose waypoint
// process reads the model from the API server with the chart's waypoint RBAC: HTTP to
// the bound Service goes through it and the server sees the client's address; with the
// Gateway deleted the bound Service's traffic is refused, never sent around it.
func TestKubeWaypointModel(t *testing.T) {
	requireMesh(t)
	gc := gatewayClient(t)
	seen := withWeb(t)
	enroll(t)
	createWaypoint(t, gc)
	const sa = "waypoint-model"
	bindClusterRole(t, sa)
	kubeconfig, err := m.WriteServiceAccountKubeconfig(context.Background(), appNS, sa)
	if err != nil {
		t.Fatal(err)
	}
	wpPod := startWaypointPod(t, sa, kubeconfig)
	// Its certificate is its own, issued to its own token.
	self := "spiffe://" + mesh.TrustDomain + "/ns/" + appNS + "/sa/" + sa
	if err := m.WaitCALog("ca certificate issued", "pod="+appNS+"/waypoint-0", "id="+self); err != nil {
		t.Error(err)
	}
	if ids, err := mesh.ServingIdentities(context.Background(), wpPod, netip.AddrPortFrom(wpPod.IP, 15008).String()); err != nil || len(ids) != 1 || ids[0] != self {
		t.Errorf("the waypoint serves %v (%v), want %s", ids, err, self)
	}
	bindWeb(t)
	waitBound(t, 1)

	body := waitWeb(t, "/through")
	if !strings.Contains(body, "from="+client.IP.String()+":") {
		t.Errorf("the server saw %q, want the client's address %s", body, client.IP)
	}
	if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), `msg=request`, "src.addr="+client.IP.String()+":", "path=/through", "response_code=200"); err != nil {
		t.Error(err)
	}

	if err := gc.GatewayV1().Gateways(appNS).Delete(context.Background(), waypointName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	refusedWeb(t, seen, "/gone", "is not declared")
}

// refusedWeb waits until GET path to web is refused by the client's ztunnel (reason
// in its log), then checks that a further request is refused too and reaches no server.
func refusedWeb(t *testing.T, seen *webHits, path, reason string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body, err := getWeb(path)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s still answered %d %q", path, code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := m.WaitLog(client.Node.Name, "waypoint apps/waypoint "+reason); err != nil {
		t.Error(err)
	}
	if code, _, err := getWeb(path + "/again"); err == nil || seen.saw(path+"/again") {
		t.Errorf("GET %s/again with no waypoint answered %d, delivered %v", path, code, seen.saw(path+"/again"))
	}
}
