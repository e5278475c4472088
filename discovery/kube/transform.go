package kube

import (
	"github.com/ambitmesh/ambit/discovery"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// transform trims objects before the informers cache them: the source reads
// no annotations and no managedFields, and of a pod only a handful of
// fields, so at 10k pods most of each object would be dead weight. It
// returns trimmed shallow copies rather than editing objects a client (a
// fake one, say) may still hold; it is idempotent, as client-go requires.
func transform(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return trimPod(o), nil
	case *corev1.Service:
		c := *o
		trimMeta(&c.ObjectMeta)
		return &c, nil
	case *discoveryv1.EndpointSlice:
		c := *o
		trimMeta(&c.ObjectMeta)
		return &c, nil
	case *corev1.Namespace:
		c := *o
		trimMeta(&c.ObjectMeta)
		return &c, nil
	}
	return obj, nil
}

// Node labels that make a locality (Istio reads the same ones).
const (
	LabelRegion  = corev1.LabelTopologyRegion // topology.kubernetes.io/region
	LabelZone    = corev1.LabelTopologyZone   // topology.kubernetes.io/zone
	LabelSubzone = "topology.istio.io/subzone"
)

// transformNode keeps of a Node's metadata its name and the topology labels: the
// rest (many labels, annotations, managed fields) no mapping reads.
func transformNode(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	var keep map[string]string
	for _, k := range []string{LabelRegion, LabelZone, LabelSubzone} {
		if v, ok := m.Labels[k]; ok {
			if keep == nil {
				keep = make(map[string]string, 3)
			}
			keep[k] = v
		}
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta:   m.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion, Labels: keep},
	}, nil
}

// trimMeta drops what no mapping reads from a copied ObjectMeta.
func trimMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	m.Annotations = nil // includes kubectl's last-applied-configuration
	m.OwnerReferences = nil
	m.Finalizers = nil
}

// trimPod keeps what mapObjects reads: of the conditions, only a waypoint pod's
// Ready one.
func trimPod(p *corev1.Pod) *corev1.Pod {
	var conds []corev1.PodCondition
	if _, ok := p.Labels[discovery.LabelGatewayName]; ok {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				conds = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
				break
			}
		}
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			Labels:            p.Labels,
			CreationTimestamp: p.CreationTimestamp,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			ServiceAccountName: p.Spec.ServiceAccountName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:      p.Status.Phase,
			PodIP:      p.Status.PodIP,
			PodIPs:     p.Status.PodIPs,
			Conditions: conds,
		},
	}
}
