// Package kubee2e runs Ambit on Kubernetes end to end: a real kube-apiserver and etcd, RBAC
// from the Helm chart, the CA authenticating nodes with TokenReview, ztunnels reading the
// mesh from the API, and pods in network namespaces whose enrollment follows labels live.
package kubee2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// Layout: namespace "apps" (not enrolled at start).
//
//	node1: client (sa client)
//	node2: server, server2 (sa server, label app=echo) behind service echo 198.19.0.10:80 -> "http" (8080)
var (
	m                       *mesh.Mesh
	kc                      kubernetes.Interface
	client, server, server2 *netns.Pod
	echoSrv                 = map[string]*netns.EchoServer{}
	echoVIP                 = netip.MustParseAddrPort("198.19.0.10:80")
)

const (
	appNS    = "apps"
	echoPort = 8080
)

func TestMain(tm *testing.M) {
	os.Exit(mesh.TestMain(tm, mesh.Options{Nodes: 2, PodsPerNode: 2, Kube: true}, setup))
}

func setup(ctx context.Context, mm *mesh.Mesh) (func(), error) {
	m = mm
	kc = m.Kube.Client()
	client, server, server2 = m.Topo.Nodes[0].Pods[0], m.Topo.Nodes[1].Pods[0], m.Topo.Nodes[1].Pods[1]
	if err := createApps(ctx); err != nil {
		return nil, err
	}
	var servers []*netns.EchoServer
	cleanup := func() {
		for _, e := range servers {
			e.Close()
		}
	}
	for name, p := range map[string]*netns.Pod{"server": server, "server2": server2, "client": client} {
		e, err := p.StartEcho(fmt.Sprintf("%s:%d", p.IP, echoPort))
		if err != nil {
			cleanup()
			return nil, err
		}
		echoSrv[name] = e
		servers = append(servers, e)
	}
	return cleanup, nil
}

// createApps creates the namespace, pods (with the netns pods' addresses as their status,
// as a kubelet would report), the service and its EndpointSlice (as the endpoint
// controller would).
func createApps(ctx context.Context) error {
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appNS}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for _, p := range []struct {
		pod      *netns.Pod
		name, sa string
		labels   map[string]string
	}{
		{client, "client", "client", map[string]string{"app": "client"}},
		{server, "server", "server", map[string]string{"app": "echo"}},
		{server2, "server2", "server", map[string]string{"app": "echo"}},
	} {
		if err := createPod(ctx, p.name, p.sa, p.pod, p.labels); err != nil {
			return err
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: appNS},
		Spec: corev1.ServiceSpec{
			ClusterIP: echoVIP.Addr().String(), Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if _, err := kc.CoreV1().Services(appNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service: %w", err)
	}
	return writeSlice(ctx, []*netns.Pod{server, server2}, []string{"server", "server2"})
}

func createPod(ctx context.Context, name, sa string, p *netns.Pod, labels map[string]string) error {
	return createPodIn(ctx, appNS, name, sa, p, labels)
}

// createPodIn creates pod ns/name running as sa on the netns pod p, with p's address as
// its status (as a kubelet would report).
func createPodIn(ctx context.Context, ns, name, sa string, p *netns.Pod, labels map[string]string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: p.Node.Name, ServiceAccountName: sa, Containers: []corev1.Container{{
			Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: echoPort}},
		}}},
	}
	created, err := kc.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s: %w", name, err)
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IP.String(), PodIPs: []corev1.PodIP{{IP: p.IP.String()}}}
	if _, err := kc.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set status of pod %s: %w", name, err)
	}
	return nil
}

func writeSlice(ctx context.Context, pods []*netns.Pod, names []string) error {
	ready := true
	name, port := "http", int32(echoPort)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: appNS, Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	for i, p := range pods {
		pod, err := kc.CoreV1().Pods(appNS).Get(ctx, names[i], metav1.GetOptions{})
		if err != nil {
			return err
		}
		node := p.Node.Name
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.IP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: appNS, Name: pod.Name, UID: pod.UID},
		})
	}
	cur, err := kc.DiscoveryV1().EndpointSlices(appNS).Get(ctx, slice.Name, metav1.GetOptions{})
	if err == nil {
		slice.ResourceVersion = cur.ResourceVersion
		_, err = kc.DiscoveryV1().EndpointSlices(appNS).Update(ctx, slice, metav1.UpdateOptions{})
		return err
	}
	_, err = kc.DiscoveryV1().EndpointSlices(appNS).Create(ctx, slice, metav1.CreateOptions{})
	return err
}
