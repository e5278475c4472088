package kube

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/ambitmesh/ambit/discovery"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// largeModel is 10,000 pods in 10 namespaces (half enrolled), 1,000
// services with a named target port, and one 10-endpoint slice each.
func largeModel() objects {
	var o objects
	opts := discovery.EnrollmentOptions{}.WithDefaults()
	for n := range 10 {
		var l map[string]string
		if n%2 == 0 {
			l = map[string]string{opts.NamespaceLabel: opts.EnrollValue}
		}
		o.namespaces = append(o.namespaces, newNamespace(fmt.Sprintf("ns-%d", n), l))
	}
	for i := range 10_000 {
		ns := fmt.Sprintf("ns-%d", i/1000)
		p := newPod(ns, fmt.Sprintf("pod-%d", i), []string{ipFor(i)})
		p.Spec.NodeName = fmt.Sprintf("node-%d", i%100)
		p.Labels = map[string]string{"app": fmt.Sprintf("svc-%d", i/10), "pod-template-hash": "abc123"}
		o.pods = append(o.pods, trimPod(p))
	}
	for s := range 1_000 {
		ns := fmt.Sprintf("ns-%d", s/100) // with its pods 10s..10s+9
		name := fmt.Sprintf("svc-%d", s)
		o.services = append(o.services, newService(ns, name, []string{fmt.Sprintf("198.19.%d.%d", s/250, s%250+1)},
			svcPort{name: "http", port: 80, target: intstr.FromString("web")}, svcPort{name: "grpc", port: 9090}))
		eps := make([]sliceEP, 10)
		for j := range eps {
			i := s*10 + j
			eps[j] = sliceEP{addr: ipFor(i), pod: fmt.Sprintf("pod-%d", i)}
		}
		sl := newSlice(ns, name+"-abcde", name, []slicePort{{"http", 8080}, {"grpc", 9090}}, eps...)
		o.slices = append(o.slices, sl)
	}
	return o
}

func BenchmarkBuild10k(b *testing.B) {
	objs := largeModel()
	res := mustBuild(b, objs)
	if len(res.snap.Workloads) != 10_000 || len(res.snap.Services) != 1_000 || len(res.problems) != 0 {
		b.Fatalf("%d workloads, %d services, problems %v", len(res.snap.Workloads), len(res.snap.Services), res.problems)
	}
	if ep := res.snap.Services[0].Endpoints; len(ep) != 10 || ep[0].WorkloadUID == "" {
		b.Fatalf("endpoints %+v", ep)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := build(objs, discovery.EnrollmentOptions{}, DefaultClusterDomain); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnchanged10k is the cost of noticing that a rebuild gave the
// model already published.
func BenchmarkUnchanged10k(b *testing.B) {
	objs := largeModel()
	a, c := mustBuild(b, objs), mustBuild(b, objs)
	b.ReportAllocs()
	for b.Loop() {
		if !reflect.DeepEqual(a.in, c.in) {
			b.Fatal("differ")
		}
	}
}

// BenchmarkMap10k is the Kubernetes mapping alone (without discovery.Build).
func BenchmarkMap10k(b *testing.B) {
	objs := largeModel()
	b.ReportAllocs()
	for b.Loop() {
		mapObjects(objs, DefaultClusterDomain, nil)
	}
}
