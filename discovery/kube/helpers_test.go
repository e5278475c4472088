package kube

import (
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Object builders shared by the mapping, source and real API server tests.

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newNamespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

type podOpt func(*corev1.Pod)

// newPod makes a running pod on node-1 with UID "uid-<ns>-<name>" and the
// given IPs in status.podIPs (and the first in status.podIP).
func newPod(ns, name string, ips []string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name),
			Labels:            map[string]string{"app": name},
			CreationTimestamp: metav1.NewTime(epoch),
		},
		Spec: corev1.PodSpec{
			NodeName:           "node-1",
			ServiceAccountName: "sa-" + name,
			Containers:         []corev1.Container{{Name: "c", Image: "example.invalid/c"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	setPodIPs(p, ips)
	for _, o := range opts {
		o(p)
	}
	return p
}

func setPodIPs(p *corev1.Pod, ips []string) {
	p.Status.PodIPs = nil
	p.Status.PodIP = ""
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
}

func withLabels(l map[string]string) podOpt { return func(p *corev1.Pod) { p.Labels = l } }

func withCreated(t time.Time) podOpt {
	return func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t) }
}

type svcPort struct {
	name   string
	port   int32
	target intstr.IntOrString
	proto  corev1.Protocol
}

func newService(ns, name string, clusterIPs []string, ports ...svcPort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIPs: clusterIPs, Selector: map[string]string{"app": name}},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
	}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{
			Name: p.name, Port: p.port, TargetPort: p.target, Protocol: cmpOr(p.proto, corev1.ProtocolTCP),
		})
	}
	return s
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

// sliceEP is one endpoint of a slice; pod "" means no targetRef.
type sliceEP struct {
	addr    string
	pod     string // pod name in the slice's namespace
	ready   *bool
	serving *bool
}

type slicePort struct {
	name string
	port int32
}

func newSlice(ns, name, svc string, ports []slicePort, eps ...sliceEP) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if a, err := netip.ParseAddr(firstAddr(eps)); err == nil && a.Is6() {
		sl.AddressType = discoveryv1.AddressTypeIPv6
	}
	for _, p := range ports {
		tcp := corev1.ProtocolTCP
		sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: ptr(p.name), Port: ptr(p.port), Protocol: &tcp})
	}
	for _, e := range eps {
		ep := discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving},
		}
		if e.pod != "" {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod, UID: types.UID("uid-" + ns + "-" + e.pod)}
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

func firstAddr(eps []sliceEP) string {
	if len(eps) == 0 {
		return ""
	}
	return eps[0].addr
}

func ptr[T any](v T) *T { return &v }

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// ipFor gives pod i of a large model a unique address in 198.18.0.0/15.
func ipFor(i int) string { return fmt.Sprintf("198.18.%d.%d", i/250, i%250+1) }
