package kube

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambitmesh/ambit/discovery"
)

func withReady(status corev1.ConditionStatus) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: status})
	}
}

// Only Ready pods of a waypoint run it (Istio counts a Gateway as a waypoint only once
// a pod is Ready); one that is not is left out of the model with a Problem. The label
// naming a Gateway that is not a waypoint changes nothing.
func TestWaypointPods(t *testing.T) {
	gw := map[string]string{discovery.LabelGatewayName: "wp"}
	other := map[string]string{discovery.LabelGatewayName: "ingress"}
	objs := objects{
		namespaces: []*corev1.Namespace{newNamespace("ns", nil)},
		pods: []*corev1.Pod{
			newPod("ns", "wp-ready", []string{"198.18.0.1"}, withLabels(gw), withReady(corev1.ConditionTrue)),
			newPod("ns", "wp-starting", []string{"198.18.0.2"}, withLabels(gw), withReady(corev1.ConditionFalse)),
			newPod("ns", "wp-unknown", []string{"198.18.0.3"}, withLabels(gw)),
			newPod("ns", "ingress", []string{"198.18.0.4"}, withLabels(other)),
		},
		gateways: Gateways{Waypoints: []*discovery.Waypoint{{Name: "wp", Namespace: "ns"}}},
	}
	res := mustBuild(t, objs)
	var names []string
	for _, w := range res.snap.Workloads {
		names = append(names, w.Name)
	}
	slices.Sort(names)
	if want := []string{"ingress", "wp-ready"}; !slices.Equal(names, want) {
		t.Errorf("workloads %v, want %v", names, want)
	}
	wp := res.snap.Waypoint("ns/wp")
	if wp == nil || len(wp.Pods) != 1 || wp.Pods[0].Name != "wp-ready" {
		t.Fatalf("waypoint ns/wp: %+v, want its one Ready pod", wp)
	}
	checkReasons(t, res.problems, KindPod, []string{ReasonWaypointNotReady, ReasonWaypointNotReady})

	// The Ready condition survives the informers' trimming, for waypoint pods only.
	for _, p := range objs.pods {
		tp, _ := transform(p)
		if podReady(tp.(*corev1.Pod)) != podReady(p) {
			t.Errorf("pod %s: trimmed readiness differs", p.Name)
		}
	}
	plain := newPod("ns", "plain", []string{"198.18.0.5"}, withReady(corev1.ConditionTrue))
	if tp, _ := transform(plain); len(tp.(*corev1.Pod).Status.Conditions) != 0 {
		t.Error("the conditions of a pod that runs no waypoint are kept")
	}
}
