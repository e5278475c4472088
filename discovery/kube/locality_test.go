package kube

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"

	"github.com/ambitmesh/ambit/discovery"
)

// newNode is a Node's metadata as the metadata client returns it.
func newNode(name string, labels map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}
}

func topology(region, zone, subzone string) map[string]string {
	l := map[string]string{"kubernetes.io/hostname": "h"}
	for k, v := range map[string]string{LabelRegion: region, LabelZone: zone, LabelSubzone: subzone} {
		if v != "" {
			l[k] = v
		}
	}
	return l
}

func onNode(node string) podOpt { return func(p *corev1.Pod) { p.Spec.NodeName = node } }

// zoned sets the zone of every endpoint of the slice.
func zoned(sl *discoveryv1.EndpointSlice, zone string) *discoveryv1.EndpointSlice {
	for i := range sl.Endpoints {
		sl.Endpoints[i].Zone = ptr(zone)
	}
	return sl
}

func TestMapLocality(t *testing.T) {
	ns := []*corev1.Namespace{newNamespace("ns", nil)}
	podA := newPod("ns", "a", []string{"198.18.0.1"}, onNode("n1"))
	slice := func() *discoveryv1.EndpointSlice {
		return newSlice("ns", "s-1", "s", []slicePort{{"http", 8080}}, sliceEP{addr: "198.18.0.1", pod: "a"})
	}
	svc := newService("ns", "s", []string{"198.19.0.10"}, svcPort{name: "http", port: 80, target: intstr.FromInt32(8080)})
	tests := []struct {
		name     string
		nodes    []*metav1.PartialObjectMetadata // nil: not watched
		slices   []*discoveryv1.EndpointSlice
		locality discovery.Locality // of workload a
		nodesOut string             // the model's nodes
		probs    []string           // EndpointSlice problems
	}{
		{
			name:     "from the node's labels",
			nodes:    []*metav1.PartialObjectMetadata{newNode("n1", topology("us-east", "us-east-1a", "rack-4")), newNode("n2", nil)},
			locality: discovery.Locality{Region: "us-east", Zone: "us-east-1a", Subzone: "rack-4"},
			nodesOut: "n1=us-east/us-east-1a/rack-4 n2=",
		},
		{
			name:     "the node's labels win over the slice's zone",
			nodes:    []*metav1.PartialObjectMetadata{newNode("n1", topology("us-east", "us-east-1a", ""))},
			slices:   []*discoveryv1.EndpointSlice{zoned(slice(), "us-east-1c")},
			locality: discovery.Locality{Region: "us-east", Zone: "us-east-1a"},
			nodesOut: "n1=us-east/us-east-1a",
		},
		{
			name:     "a node not (yet) in the cache is declared without locality",
			nodes:    []*metav1.PartialObjectMetadata{newNode("n2", topology("eu", "eu-1", ""))},
			nodesOut: "n2=eu/eu-1 n1=",
		},
		{
			name:     "the slice's zone when the node has no labels",
			nodes:    []*metav1.PartialObjectMetadata{newNode("n1", nil)},
			slices:   []*discoveryv1.EndpointSlice{zoned(slice(), "us-east-1c")},
			locality: discovery.Locality{Zone: "us-east-1c"},
			nodesOut: "n1=",
		},
		{
			name:     "the slice's zone when nodes are not watched",
			slices:   []*discoveryv1.EndpointSlice{zoned(slice(), "us-east-1c")},
			locality: discovery.Locality{Zone: "us-east-1c"},
		},
		{
			name:     "an invalid slice zone is a problem",
			nodes:    []*metav1.PartialObjectMetadata{},
			slices:   []*discoveryv1.EndpointSlice{zoned(slice(), "us east")},
			nodesOut: "n1=",
			probs:    []string{`invalid endpoint zone "us east"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustBuild(t, objects{namespaces: ns, pods: []*corev1.Pod{podA}, services: []*corev1.Service{svc}, slices: tt.slices, nodes: tt.nodes})
			w := res.snap.WorkloadByUID("uid-ns-a")
			if w == nil {
				t.Fatalf("workload a left out; problems %+v", res.problems)
			}
			if w.Locality != tt.locality {
				t.Errorf("locality %+v, want %+v", w.Locality, tt.locality)
			}
			var nodes []string
			for _, n := range res.snap.Nodes {
				nodes = append(nodes, n.Name+"="+n.Locality.String())
			}
			if got := strings.Join(nodes, " "); got != tt.nodesOut {
				t.Errorf("nodes %q, want %q", got, tt.nodesOut)
			}
			checkReasons(t, res.problems, KindEndpointSlice, tt.probs)
			checkReasons(t, res.problems, KindPod, nil)
		})
	}
}

func TestMapTrafficDistribution(t *testing.T) {
	tests := []struct {
		value *string
		want  string
		probs []string
	}{
		{nil, "", nil},
		{ptr(""), "", nil},
		{ptr(corev1.ServiceTrafficDistributionPreferClose), discovery.TrafficDistributionPreferClose, nil},
		{ptr(corev1.ServiceTrafficDistributionPreferSameZone), discovery.TrafficDistributionPreferSameZone, nil},
		{ptr(corev1.ServiceTrafficDistributionPreferSameNode), "", []string{`spec.trafficDistribution: "PreferSameNode" is not supported (PreferClose or PreferSameZone); ignored`}},
		{ptr("Nearby"), "", []string{`spec.trafficDistribution: "Nearby" is not supported (PreferClose or PreferSameZone); ignored`}},
	}
	for _, tt := range tests {
		name := "nil"
		if tt.value != nil {
			name = fmt.Sprintf("%q", *tt.value)
		}
		t.Run(name, func(t *testing.T) {
			s := newService("ns", "s", []string{"198.19.0.10"}, svcPort{name: "http", port: 80})
			s.Spec.TrafficDistribution = tt.value
			res := mustBuild(t, objects{namespaces: []*corev1.Namespace{newNamespace("ns", nil)}, services: []*corev1.Service{s}})
			got := res.snap.ServiceByName("ns", "s")
			if got == nil {
				t.Fatalf("service left out; problems %+v", res.problems)
			}
			if got.TrafficDistribution != tt.want {
				t.Errorf("trafficDistribution %q, want %q", got.TrafficDistribution, tt.want)
			}
			checkReasons(t, res.problems, KindService, tt.probs)
		})
	}
}

func TestTransformNode(t *testing.T) {
	n := newNode("n1", topology("us-east", "us-east-1a", ""))
	n.Annotations = map[string]string{"node.alpha.kubernetes.io/ttl": "0"}
	n.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	n.ResourceVersion = "42"
	out, err := transformNode(n)
	if err != nil {
		t.Fatal(err)
	}
	want := &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "42", Labels: map[string]string{LabelRegion: "us-east", LabelZone: "us-east-1a"}},
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("transformNode:\n got %+v\nwant %+v", out, want)
	}
	if again, _ := transformNode(out); !reflect.DeepEqual(again, out) {
		t.Error("transformNode is not idempotent")
	}
	if n.Annotations == nil || len(n.Labels) != 3 {
		t.Error("transformNode modified its input")
	}
}

// A node's relabelling reaches its pods' locality live; a pod on a node the cache
// does not know stays in the model.
func TestSourceNodeLocalityLive(t *testing.T) {
	noLeaks(t)
	client := fake.NewClientset(
		newNamespace("ns", nil),
		newPod("ns", "a", []string{"198.18.0.1"}, onNode("n1")),
		newPod("ns", "b", []string{"198.18.0.2"}, onNode("n-unknown")),
	)
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	meta := metadatafake.NewSimpleMetadataClient(scheme, newNode("n1", topology("us-east", "us-east-1a", "")))
	_, store := runSource(t, client, Config{Metadata: meta})
	localityOf := func(s *discovery.Snapshot, uid string) string {
		if w := s.WorkloadByUID(uid); w != nil {
			return w.Locality.String()
		}
		return "(no workload)"
	}
	waitModel(t, store, "a in us-east-1a, b kept", func(s *discovery.Snapshot) bool {
		return localityOf(s, "uid-ns-a") == "us-east/us-east-1a" && localityOf(s, "uid-ns-b") == ""
	})

	nodes := meta.Resource(corev1.SchemeGroupVersion.WithResource("nodes")).(metadatafake.MetadataClient)
	if _, err := nodes.UpdateFake(newNode("n1", topology("us-east", "us-east-1b", "rack-2")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "a moved to us-east-1b", func(s *discovery.Snapshot) bool {
		n := s.Node("n1")
		return localityOf(s, "uid-ns-a") == "us-east/us-east-1b/rack-2" && n != nil && n.Locality.Zone == "us-east-1b"
	})
	if _, err := nodes.CreateFake(newNode("n-unknown", topology("eu", "eu-1", "")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "b's node appeared", func(s *discovery.Snapshot) bool { return localityOf(s, "uid-ns-b") == "eu/eu-1" })
}

// fakeTraffic is a TrafficSource with fixed rules.
type fakeTraffic struct {
	rules []*networkingv1.DestinationRule
	probs []Problem
}

func (f *fakeTraffic) Start(context.Context, func()) (bool, error) { return true, nil }
func (f *fakeTraffic) DestinationRules() ([]*networkingv1.DestinationRule, []Problem, error) {
	return f.rules, f.probs, nil
}
func (f *fakeTraffic) Shutdown() {}

// The traffic source's rules are the model's; its problems are the source's and the
// model's TrafficProblems.
func TestSourceDestinationRules(t *testing.T) {
	noLeaks(t)
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "ns"}}
	dr.Spec.Host = "reviews"
	traffic := &fakeTraffic{
		rules: []*networkingv1.DestinationRule{dr},
		probs: []Problem{{Kind: discovery.KindDestinationRule, Namespace: "ns", Name: "bad", Reason: "left out: spec.host: expected a string, got a list"}},
	}
	src, store := runSource(t, twoPods(), Config{Traffic: traffic})
	s := waitModel(t, store, "rules", func(s *discovery.Snapshot) bool { return len(s.DestinationRules) == 1 })
	if s.DestinationRules[0] != dr {
		t.Errorf("rules %v", s.DestinationRules)
	}
	if want := []string{"DestinationRule ns/bad: left out: spec.host: expected a string, got a list"}; !reflect.DeepEqual(s.TrafficProblems, want) {
		t.Errorf("TrafficProblems %q, want %q", s.TrafficProblems, want)
	}
	waitProblem(t, src, store, discovery.KindDestinationRule, "bad", "left out: spec.host")
}
