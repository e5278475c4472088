package kube

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestMapPods(t *testing.T) {
	tests := []struct {
		name  string
		pod   *corev1.Pod
		want  *discovery.Workload // nil: no workload
		probs []string            // reasons
	}{
		{
			name: "dual-stack podIPs",
			pod:  newPod("ns", "a", []string{"198.18.0.1", "fd00::1"}),
			want: &discovery.Workload{UID: "uid-ns-a", Name: "a", Namespace: "ns", ServiceAccount: "sa-a", Node: "node-1",
				IPs: addrs("198.18.0.1", "fd00::1"), Labels: map[string]string{"app": "a"}, Protocol: discovery.ProtocolTCP},
		},
		{
			name: "podIP only, default service account",
			pod: newPod("ns", "a", nil, func(p *corev1.Pod) {
				p.Status.PodIP = "198.18.0.1"
				p.Spec.ServiceAccountName = ""
			}),
			want: &discovery.Workload{UID: "uid-ns-a", Name: "a", Namespace: "ns", ServiceAccount: "default", Node: "node-1",
				IPs: addrs("198.18.0.1"), Labels: map[string]string{"app": "a"}, Protocol: discovery.ProtocolTCP},
		},
		{
			name:  "no IP yet",
			pod:   newPod("ns", "a", nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }),
			probs: []string{ReasonNoPodIP},
		},
		{
			name: "host network",
			pod:  newPod("ns", "a", []string{"198.18.0.1"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		},
		{
			name: "succeeded",
			pod:  newPod("ns", "a", []string{"198.18.0.1"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		},
		{
			name: "failed",
			pod:  newPod("ns", "a", []string{"198.18.0.1"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
		},
		{
			name: "being deleted is kept",
			pod: newPod("ns", "a", []string{"198.18.0.1"}, func(p *corev1.Pod) {
				now := metav1.NewTime(epoch)
				p.DeletionTimestamp = &now
			}),
			want: &discovery.Workload{UID: "uid-ns-a", Name: "a", Namespace: "ns", ServiceAccount: "sa-a", Node: "node-1",
				IPs: addrs("198.18.0.1"), Labels: map[string]string{"app": "a"}, Protocol: discovery.ProtocolTCP},
		},
		{
			name:  "invalid IP among valid ones",
			pod:   newPod("ns", "a", []string{"198.18.0.1", "bogus"}),
			probs: []string{`invalid pod IP "bogus"`},
			want: &discovery.Workload{UID: "uid-ns-a", Name: "a", Namespace: "ns", ServiceAccount: "sa-a", Node: "node-1",
				IPs: addrs("198.18.0.1"), Labels: map[string]string{"app": "a"}, Protocol: discovery.ProtocolTCP},
		},
		{
			name:  "only invalid IPs",
			pod:   newPod("ns", "a", []string{"bogus"}),
			probs: []string{`invalid pod IP "bogus"`},
		},
		{
			name:  "malformed label is left out",
			pod:   newPod("ns", "a", []string{"198.18.0.1"}, withLabels(map[string]string{"bad key!": "x"})),
			probs: []string{`left out of the mesh model: labels["bad key!"]: "bad key!" is not a valid label key`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustBuild(t, objects{namespaces: []*corev1.Namespace{newNamespace("ns", nil)}, pods: []*corev1.Pod{tt.pod}})
			var got *discovery.Workload
			if len(res.snap.Workloads) > 0 {
				got = res.snap.Workloads[0]
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("workload:\n got %+v\nwant %+v", got, tt.want)
			}
			checkReasons(t, res.problems, KindPod, tt.probs)
		})
	}
}

func TestMapServices(t *testing.T) {
	ns := []*corev1.Namespace{newNamespace("ns", nil)}
	pods := []*corev1.Pod{
		newPod("ns", "a", []string{"198.18.0.1"}),
		newPod("ns", "b", []string{"198.18.0.2"}),
		newPod("ns", "c", []string{"198.18.0.3"}),
	}
	named := svcPort{name: "http", port: 80, target: intstr.FromString("web")}
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   *discovery.Service // nil: no service
		probs  []Problem          // Since ignored
	}{
		{
			name: "numeric target port, default target port, UDP dropped",
			svc: newService("ns", "s", []string{"198.19.0.10"},
				svcPort{name: "http", port: 80, target: intstr.FromInt32(8080)},
				svcPort{name: "other", port: 90},
				svcPort{name: "dns", port: 53, target: intstr.FromInt32(53), proto: corev1.ProtocolUDP}),
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports: []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "other", Port: 90, TargetPort: 90}}},
		},
		{
			name: "named target port resolved from a slice, endpoints with workloads",
			svc:  newService("ns", "s", []string{"198.19.0.10", "fd00:19::10"}, named),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", []slicePort{{"http", 8080}}, sliceEP{addr: "198.18.0.1", pod: "a"}, sliceEP{addr: "198.18.0.2", pod: "b"}),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10", "fd00:19::10"),
				Ports:     []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, TargetPortName: "web"}},
				Endpoints: []discovery.Endpoint{{WorkloadUID: "uid-ns-a", Addr: addrs("198.18.0.1")[0]}, {WorkloadUID: "uid-ns-b", Addr: addrs("198.18.0.2")[0]}}},
		},
		{
			name: "named target port resolving differently: most endpoints win",
			svc:  newService("ns", "s", []string{"198.19.0.10"}, named),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", []slicePort{{"http", 9090}}, sliceEP{addr: "198.18.0.1", pod: "a"}),
				newSlice("ns", "s-2", "s", []slicePort{{"http", 8080}}, sliceEP{addr: "198.18.0.2", pod: "b"}, sliceEP{addr: "198.18.0.3", pod: "c"}),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports: []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, TargetPortName: "web"}},
				Endpoints: []discovery.Endpoint{{WorkloadUID: "uid-ns-a", Addr: addrs("198.18.0.1")[0]},
					{WorkloadUID: "uid-ns-b", Addr: addrs("198.18.0.2")[0]}, {WorkloadUID: "uid-ns-c", Addr: addrs("198.18.0.3")[0]}}},
			probs: []Problem{{Kind: KindService, Namespace: "ns", Name: "s",
				Reason: `port 80: target port name "web" resolves to different numbers (8080 on 2 endpoints, 9090 on 1 endpoints); using 8080`}},
		},
		{
			name: "unknown target port name",
			svc:  newService("ns", "s", []string{"198.19.0.10"}, named),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", nil, sliceEP{addr: "198.18.0.1", pod: "a"}),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports:     []discovery.ServicePort{{Name: "http", Port: 80, TargetPortName: "web"}},
				Endpoints: []discovery.Endpoint{{WorkloadUID: "uid-ns-a", Addr: addrs("198.18.0.1")[0]}}},
			probs: []Problem{{Kind: KindService, Namespace: "ns", Name: "s",
				Reason: `port 80: target port name "web" is not resolved by any EndpointSlice (no container port of that name?); using the service port`}},
		},
		{
			name: "named target port without endpoints is no problem",
			svc:  newService("ns", "s", []string{"198.19.0.10"}, named),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", nil),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports: []discovery.ServicePort{{Name: "http", Port: 80, TargetPortName: "web"}}},
		},
		{
			name: "headless",
			svc:  newService("ns", "s", []string{"None"}, svcPort{name: "http", port: 80}),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", []slicePort{{"http", 80}}, sliceEP{addr: "198.18.0.1", pod: "a"}),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: []netip.Addr{},
				Ports:     []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 80}},
				Endpoints: []discovery.Endpoint{{WorkloadUID: "uid-ns-a", Addr: addrs("198.18.0.1")[0]}}},
		},
		{
			name: "external name is left out",
			svc: func() *corev1.Service {
				s := newService("ns", "s", nil, svcPort{name: "http", port: 80})
				s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
				return s
			}(),
		},
		{
			name: "ready endpoints only, unknown targets and foreign slices",
			svc:  newService("ns", "s", []string{"198.19.0.10"}, svcPort{port: 80}),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", []slicePort{{"", 80}},
					sliceEP{addr: "198.18.0.1", pod: "a", ready: ptr(true)},
					sliceEP{addr: "198.18.0.2", pod: "b", ready: ptr(false), serving: ptr(true)},
					sliceEP{addr: "198.18.0.3", pod: "c", ready: ptr(false)},
					sliceEP{addr: "198.18.9.9", pod: "gone"},
					sliceEP{addr: "198.18.9.8"},
					sliceEP{addr: "198.18.0.1", pod: "a"}, // listed twice
				),
				newSlice("ns", "other-1", "other", []slicePort{{"", 80}}, sliceEP{addr: "198.18.0.3", pod: "c"}),
				newSlice("ns2", "s-1", "s", []slicePort{{"", 80}}, sliceEP{addr: "198.18.0.3", pod: "c"}),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports: []discovery.ServicePort{{Port: 80, TargetPort: 80}},
				Endpoints: []discovery.Endpoint{{WorkloadUID: "uid-ns-a", Addr: addrs("198.18.0.1")[0]},
					{Addr: addrs("198.18.9.9")[0]}, {Addr: addrs("198.18.9.8")[0]}}},
		},
		{
			name: "serving terminating endpoints when none is ready",
			svc:  newService("ns", "s", []string{"198.19.0.10"}, svcPort{port: 80}),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", []slicePort{{"", 80}},
					sliceEP{addr: "198.18.0.2", pod: "b", ready: ptr(false), serving: ptr(true)},
					sliceEP{addr: "198.18.0.3", pod: "c", ready: ptr(false), serving: ptr(false)},
				),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports:     []discovery.ServicePort{{Port: 80, TargetPort: 80}},
				Endpoints: []discovery.Endpoint{{WorkloadUID: "uid-ns-b", Addr: addrs("198.18.0.2")[0]}}},
		},
		{
			name: "bad addresses",
			svc:  newService("ns", "s", []string{"198.19.0.10", "nope"}, svcPort{port: 80}),
			slices: []*discoveryv1.EndpointSlice{
				newSlice("ns", "s-1", "s", []slicePort{{"", 80}}, sliceEP{addr: "not-an-ip"}),
			},
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Ports: []discovery.ServicePort{{Port: 80, TargetPort: 80}}},
			probs: []Problem{
				{Kind: KindEndpointSlice, Namespace: "ns", Name: "s-1", Reason: `invalid endpoint address "not-an-ip"`},
				{Kind: KindService, Namespace: "ns", Name: "s", Reason: `invalid cluster IP "nope"`},
			},
		},
		{
			name: "labels and appProtocol reach the model (waypoint binding, protocol choice)",
			svc: func() *corev1.Service {
				s := newService("ns", "s", []string{"198.19.0.10"}, svcPort{name: "web", port: 80, target: intstr.FromInt32(8080)})
				s.Labels = map[string]string{discovery.LabelUseWaypoint: "wp"}
				s.Spec.Ports[0].AppProtocol = ptr("kubernetes.io/h2c")
				return s
			}(),
			want: &discovery.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local", VIPs: addrs("198.19.0.10"),
				Labels: map[string]string{discovery.LabelUseWaypoint: "wp"}, Waypoint: "ns/wp",
				Ports: []discovery.ServicePort{{Name: "web", Port: 80, TargetPort: 8080, AppProtocol: "kubernetes.io/h2c"}}},
		},
		{
			name:  "VIP taken by a pod: service left out",
			svc:   newService("ns", "s", []string{"198.18.0.1"}, svcPort{port: 80}),
			probs: []Problem{{Kind: KindService, Namespace: "ns", Name: "s", Reason: "left out of the mesh model: vips[0]: 198.18.0.1 of service ns/s is already used by workload ns/a"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustBuild(t, objects{namespaces: ns, pods: pods, services: []*corev1.Service{tt.svc}, slices: tt.slices})
			var got *discovery.Service
			if len(res.snap.Services) > 0 {
				got = res.snap.Services[0]
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("service:\n got %+v\nwant %+v", got, tt.want)
			}
			if !reflect.DeepEqual(res.problems, tt.probs) {
				t.Errorf("problems:\n got %q\nwant %q", res.problems, tt.probs)
			}
		})
	}
}

func TestClusterDomain(t *testing.T) {
	res, err := build(objects{services: []*corev1.Service{newService("ns", "s", nil, svcPort{port: 80})}}, discovery.EnrollmentOptions{}, "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	if got := res.snap.Services[0].Hostname; got != "s.ns.svc.corp.example" {
		t.Errorf("hostname %q", got)
	}
}

func TestConflicts(t *testing.T) {
	deleting := func(p *corev1.Pod) {
		now := metav1.NewTime(epoch)
		p.DeletionTimestamp = &now
	}
	tests := []struct {
		name    string
		pods    []*corev1.Pod
		nss     []*corev1.Namespace
		keep    []string // workload names in the model
		dropped []string // pod names with a Problem
	}{
		{
			name: "same IP: newest wins",
			pods: []*corev1.Pod{
				newPod("ns", "old", []string{"198.18.0.1"}, withCreated(epoch)),
				newPod("ns", "new", []string{"198.18.0.1"}, withCreated(epoch.Add(time.Minute))),
				newPod("ns", "other", []string{"198.18.0.2"}),
			},
			keep:    []string{"new", "other"},
			dropped: []string{"old"},
		},
		{
			name: "same IP: pod being deleted loses even when newer",
			pods: []*corev1.Pod{
				newPod("ns", "live", []string{"198.18.0.1"}, withCreated(epoch)),
				newPod("ns", "dying", []string{"198.18.0.1"}, withCreated(epoch.Add(time.Minute)), deleting),
			},
			keep:    []string{"live"},
			dropped: []string{"dying"},
		},
		{
			name: "same IP, same age: name order",
			pods: []*corev1.Pod{
				newPod("ns", "b", []string{"198.18.0.1"}),
				newPod("ns", "a", []string{"198.18.0.1"}),
			},
			keep:    []string{"a"},
			dropped: []string{"b"},
		},
		{
			name: "duplicate UID",
			pods: []*corev1.Pod{
				newPod("ns", "a", []string{"198.18.0.1"}),
				newPod("ns", "b", []string{"198.18.0.2"}, func(p *corev1.Pod) { p.UID = "uid-ns-a" }),
			},
			keep:    []string{"a"},
			dropped: []string{"b"},
		},
		{
			name: "bad namespace label drops the namespace, not its pods",
			nss:  []*corev1.Namespace{newNamespace("ns", map[string]string{"x": "-bad-"})},
			pods: []*corev1.Pod{newPod("ns", "a", []string{"198.18.0.1"})},
			keep: []string{"a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustBuild(t, objects{namespaces: tt.nss, pods: tt.pods})
			var keep []string
			for _, w := range res.snap.Workloads {
				keep = append(keep, w.Name)
			}
			slices.Sort(keep)
			if !slices.Equal(keep, tt.keep) {
				t.Errorf("workloads %v, want %v", keep, tt.keep)
			}
			var dropped []string
			for _, p := range res.problems {
				if p.Kind == KindPod {
					dropped = append(dropped, p.Name)
					if !strings.HasPrefix(p.Reason, reasonLeftOut) {
						t.Errorf("reason %q", p.Reason)
					}
				}
			}
			if !slices.Equal(dropped, tt.dropped) {
				t.Errorf("dropped %v, want %v (problems %q)", dropped, tt.dropped, res.problems)
			}
			if len(tt.nss) > 0 && len(res.snap.Namespaces) != 0 {
				t.Errorf("namespace with a bad label kept: %+v", res.snap.Namespaces)
			}
		})
	}
}

func TestEnrollmentMapping(t *testing.T) {
	opts := discovery.EnrollmentOptions{}.WithDefaults()
	objs := objects{
		namespaces: []*corev1.Namespace{
			newNamespace("mesh", map[string]string{opts.NamespaceLabel: opts.EnrollValue}),
			newNamespace("plain", nil),
		},
		pods: []*corev1.Pod{
			newPod("mesh", "in", []string{"198.18.0.1"}),
			newPod("mesh", "out", []string{"198.18.0.2"}, withLabels(map[string]string{opts.PodLabel: opts.OptOutValue})),
			newPod("plain", "solo", []string{"198.18.0.3"}, withLabels(map[string]string{opts.PodLabel: opts.EnrollValue})),
			newPod("plain", "off", []string{"198.18.0.4"}),
		},
	}
	res := mustBuild(t, objs)
	want := map[string]bool{"in": true, "out": false, "solo": true, "off": false}
	for _, w := range res.snap.Workloads {
		if w.Enrolled != want[w.Name] {
			t.Errorf("%s enrolled = %v, want %v", w.Name, w.Enrolled, want[w.Name])
		}
	}
}

func TestTransform(t *testing.T) {
	p := newPod("ns", "a", []string{"198.18.0.1"})
	p.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: "{...}"}
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	out, err := transform(p)
	if err != nil {
		t.Fatal(err)
	}
	tp := out.(*corev1.Pod)
	if tp.Annotations != nil || tp.ManagedFields != nil || len(tp.Spec.Containers) != 0 {
		t.Errorf("pod not trimmed: %+v", tp)
	}
	again, _ := transform(tp)
	if !reflect.DeepEqual(again, tp) {
		t.Error("transform is not idempotent")
	}
	// What the mapping reads survives.
	a := mustBuild(t, objects{pods: []*corev1.Pod{p}})
	b := mustBuild(t, objects{pods: []*corev1.Pod{tp}})
	if !reflect.DeepEqual(a.snap.Workloads, b.snap.Workloads) {
		t.Errorf("trimmed pod maps differently:\n%+v\n%+v", a.snap.Workloads[0], b.snap.Workloads[0])
	}
	s := newService("ns", "s", nil)
	s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	s.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: "{...}"}
	if out, _ := transform(s); out.(*corev1.Service).ManagedFields != nil || out.(*corev1.Service).Annotations != nil {
		t.Error("service not trimmed")
	}
}

func TestLocate(t *testing.T) {
	m := &mapped{wlKeys: []objKey{{KindPod, "ns", "a"}}, svcKeys: []objKey{{KindService, "ns", "s"}}, nsKeys: []objKey{{KindNamespace, "", "ns"}},
		nodeKeys: []objKey{{KindNode, "", "n1"}}}
	tests := []struct {
		path  string
		key   objKey
		field string
		ok    bool
	}{
		{"workloads[0].ips[1]", objKey{KindPod, "ns", "a"}, "ips[1]", true},
		{"services[0]", objKey{KindService, "ns", "s"}, "", true},
		{`namespaces[0].labels["a.b/c"]`, objKey{KindNamespace, "", "ns"}, `labels["a.b/c"]`, true},
		{"workloads[1]", objKey{}, "", false},
		{"workloads[-1]", objKey{}, "", false},
		{"nodes[0].locality.zone", objKey{KindNode, "", "n1"}, "locality.zone", true},
		{"nodes[1]", objKey{}, "", false},
		{"", objKey{}, "", false},
		{"workloads[x]", objKey{}, "", false},
	}
	for _, tt := range tests {
		k, f, ok := m.locate(tt.path)
		if k != tt.key || f != tt.field || ok != tt.ok {
			t.Errorf("locate(%q) = %v, %q, %v; want %v, %q, %v", tt.path, k, f, ok, tt.key, tt.field, tt.ok)
		}
	}
}

func mustBuild(tb testing.TB, objs objects) buildResult {
	tb.Helper()
	res, err := build(objs, discovery.EnrollmentOptions{}, DefaultClusterDomain)
	if err != nil {
		tb.Fatalf("build: %v", err)
	}
	return res
}

// checkReasons compares the reasons of the problems of kind (prefix match).
func checkReasons(tb testing.TB, probs []Problem, kind string, want []string) {
	tb.Helper()
	var got []string
	for _, p := range probs {
		if p.Kind == kind {
			got = append(got, p.Reason)
		}
	}
	if len(got) != len(want) {
		tb.Errorf("problems %q, want %q", got, want)
		return
	}
	for i := range got {
		if !strings.HasPrefix(got[i], want[i]) {
			tb.Errorf("problem %q, want prefix %q", got[i], want[i])
		}
	}
}
