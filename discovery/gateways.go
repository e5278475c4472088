package discovery

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/internal/yamldoc"
)

// GatewayGroup is the Gateway API's group. Its objects share the manifest files with
// the policies: Gateways of the waypoint class declare waypoints here; routes are the
// waypoint's own business.
const GatewayGroup = "gateway.networking.k8s.io"

// Waypoint listener: protocol HBONE on 15008, as Istio users write it.
const (
	WaypointProtocol = "HBONE"
	WaypointPort     = 15008
)

// Routes are the Gateway API route objects of the manifests, for the waypoints. They
// are decoded strictly here and compiled by each waypoint (package waypoint/route).
type Routes struct {
	HTTPRoutes []*gatewayv1.HTTPRoute
	GRPCRoutes []*gatewayv1.GRPCRoute
	// ReferenceGrants (v1 or v1beta1, the same schema) admit cross-namespace backends.
	ReferenceGrants []*gatewayv1.ReferenceGrant
}

// parseRoutes returns the HTTPRoutes, GRPCRoutes and ReferenceGrants of objs; one that
// cannot be decoded is a problem and left out.
func parseRoutes(objs []yamldoc.Object) (Routes, []string) {
	var r Routes
	var problems []string
	for _, o := range objs {
		if o.Group() != GatewayGroup {
			continue
		}
		var err error
		switch o.Kind {
		case "HTTPRoute":
			var hr gatewayv1.HTTPRoute
			if err = o.DecodeStrict(&hr); err == nil {
				defaultNamespace(&hr.ObjectMeta)
				r.HTTPRoutes = append(r.HTTPRoutes, &hr)
			}
		case "GRPCRoute":
			var gr gatewayv1.GRPCRoute
			if err = o.DecodeStrict(&gr); err == nil {
				defaultNamespace(&gr.ObjectMeta)
				r.GRPCRoutes = append(r.GRPCRoutes, &gr)
			}
		case "ReferenceGrant":
			var g gatewayv1.ReferenceGrant
			if err = o.DecodeStrict(&g); err == nil {
				defaultNamespace(&g.ObjectMeta)
				r.ReferenceGrants = append(r.ReferenceGrants, &g)
			}
		case "Gateway":
		default:
			err = fmt.Errorf("%s: %s %s is not supported by Ambit's waypoint", o.Origin(), o.APIVersion, o.Kind)
		}
		if err != nil {
			problems = append(problems, err.Error())
		}
	}
	return r, problems
}

func defaultNamespace(m *metav1.ObjectMeta) {
	if m.Namespace == "" {
		m.Namespace = "default"
	}
}

// parseGateways returns the waypoints declared by the Gateway objects of objs whose
// class is class (other Gateways are not waypoints and are left alone), and the
// problems of those that cannot be used (they declare nothing).
func parseGateways(objs []yamldoc.Object, class string) ([]*Waypoint, []string) {
	var out []*Waypoint
	var problems []string
	for _, o := range objs {
		if o.Group() != GatewayGroup || o.Kind != "Gateway" {
			continue
		}
		var gw gatewayv1.Gateway
		if err := o.DecodeStrict(&gw); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if string(gw.Spec.GatewayClassName) != class {
			continue
		}
		wp, err := WaypointOf(&gw)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", o.Origin(), err))
			continue
		}
		wp.Origin = o.Origin()
		out = append(out, wp)
	}
	return out, problems
}

// WaypointOf reads a waypoint-class Gateway: its HBONE listener on 15008 (its
// allowedRoutes say which namespaces may bind) and istio.io/waypoint-for.
func WaypointOf(gw *gatewayv1.Gateway) (*Waypoint, error) {
	ns := gw.Namespace
	if ns == "" {
		ns = "default"
	}
	wp := &Waypoint{Name: gw.Name, Namespace: ns, For: WaypointFor(gw.Labels[LabelWaypointFor])}
	var hbone *gatewayv1.Listener
	for i := range gw.Spec.Listeners {
		l := &gw.Spec.Listeners[i]
		if string(l.Protocol) == WaypointProtocol && l.Port == WaypointPort {
			hbone = l
			break
		}
	}
	if hbone == nil {
		return nil, fmt.Errorf("waypoint %s/%s has no listener with protocol %s on port %d", ns, gw.Name, WaypointProtocol, WaypointPort)
	}
	if ar := hbone.AllowedRoutes; ar != nil && ar.Namespaces != nil {
		if ar.Namespaces.From != nil {
			wp.From = string(*ar.Namespaces.From)
		}
		if sel := ar.Namespaces.Selector; sel != nil {
			if len(sel.MatchExpressions) > 0 {
				return nil, fmt.Errorf("waypoint %s/%s: allowedRoutes.namespaces.selector.matchExpressions is not supported (use matchLabels)", ns, gw.Name)
			}
			wp.Selector = sel.MatchLabels
		}
	}
	return wp, nil
}
