package controller

import (
	"context"
	"fmt"
	"reflect"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/waypoint/route"
)

// msgGatewayParent is the Accepted message of a route attached to a waypoint Gateway.
const msgGatewayParent = "Ambit's waypoint takes routes attached to the Services bound to it (parentRef kind Service), not to the waypoint Gateway itself"

type routeKey struct{ kind, ns, name string }

// reconcileRoutes computes, with the waypoint's own compiler, the status of every
// HTTPRoute and GRPCRoute parentRef to a Service bound to a waypoint or to a
// waypoint Gateway, and writes the routes whose status differs.
func (c *Controller) reconcileRoutes(ctx context.Context) error {
	hrs, err := c.httpRts.List(labels.Everything())
	if err != nil {
		return err
	}
	var grs []*gatewayv1.GRPCRoute
	if c.grpcRts != nil {
		if grs, err = c.grpcRts.List(labels.Everything()); err != nil {
			return err
		}
	}
	grants, err := c.grants.List(labels.Everything())
	if err != nil {
		return err
	}
	snap, waypoints, err := c.bindingSnapshot()
	if err != nil {
		// The inputs come from the API server, so this is not expected; writing
		// statuses from a wrong view would be worse than none.
		c.log.Error(msgRouteBinding, keyError, err)
		return nil
	}
	svcs := func(ns, name string) (route.ServiceInfo, bool) {
		s, err := c.services.Services(ns).Get(name)
		if err != nil {
			return route.ServiceInfo{}, false
		}
		info := route.ServiceInfo{Namespace: ns, Name: name}
		for _, p := range s.Spec.Ports {
			if p.Port > 0 && p.Port < 1<<16 {
				info.Ports = append(info.Ports, route.ServicePort{Name: p.Name, Port: uint16(p.Port)})
			}
		}
		return info, true
	}
	_, statuses := route.Compile(hrs, grs, svcs, grants)
	want := map[routeKey][]gatewayv1.RouteParentStatus{}
	ctrl := gatewayv1.GatewayController(c.cfg.ControllerName)
	for _, st := range statuses {
		k := routeKey{st.Kind, st.Namespace, st.Name}
		for _, ps := range st.Parents {
			ns := st.Namespace
			if ps.ParentRef.Namespace != nil {
				ns = string(*ps.ParentRef.Namespace)
			}
			if s := snap.ServiceByName(ns, string(ps.ParentRef.Name)); s == nil || s.Waypoint == "" {
				continue // not bound to a waypoint: not this controller's to judge
			}
			ps.ControllerName = ctrl
			want[k] = append(want[k], ps)
		}
	}
	gatewayParents := func(k routeKey, gen int64, refs []gatewayv1.ParentReference) {
		for _, pr := range refs {
			if !isGatewayRef(pr) {
				continue
			}
			ns := k.ns
			if pr.Namespace != nil {
				ns = string(*pr.Namespace)
			}
			if !waypoints[ns+"/"+string(pr.Name)] {
				continue
			}
			want[k] = append(want[k], gatewayv1.RouteParentStatus{ParentRef: pr, ControllerName: ctrl, Conditions: []metav1.Condition{{
				Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionFalse,
				Reason: string(gatewayv1.RouteReasonUnsupportedValue), Message: msgGatewayParent, ObservedGeneration: gen,
			}}})
		}
	}
	var errs []error
	// sync writes one route's parent statuses when they changed.
	sync := func(k routeKey, gen int64, refs []gatewayv1.ParentReference, cur []gatewayv1.RouteParentStatus,
		update func([]gatewayv1.RouteParentStatus) error) {
		gatewayParents(k, gen, refs)
		parents, changed := mergeParents(cur, want[k], ctrl)
		if !changed {
			return
		}
		name := k.kind + " " + k.ns + "/" + k.name
		if err := update(parents); err != nil {
			errs = append(errs, fmt.Errorf("update %s status: %w", name, err))
			return
		}
		c.log.Debug(msgRouteStatus, keyRoute, name)
	}
	for _, hr := range hrs {
		sync(routeKey{route.KindHTTPRoute, hr.Namespace, hr.Name}, hr.Generation, hr.Spec.ParentRefs, hr.Status.Parents,
			func(parents []gatewayv1.RouteParentStatus) error {
				cp := hr.DeepCopy()
				cp.Status.Parents = parents
				_, err := c.gw.GatewayV1().HTTPRoutes(hr.Namespace).UpdateStatus(ctx, cp, updateOpts)
				return err
			})
	}
	for _, gr := range grs {
		sync(routeKey{route.KindGRPCRoute, gr.Namespace, gr.Name}, gr.Generation, gr.Spec.ParentRefs, gr.Status.Parents,
			func(parents []gatewayv1.RouteParentStatus) error {
				cp := gr.DeepCopy()
				cp.Status.Parents = parents
				_, err := c.gw.GatewayV1().GRPCRoutes(gr.Namespace).UpdateStatus(ctx, cp, updateOpts)
				return err
			})
	}
	return joinErrs(errs)
}

func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d route statuses not written: %w", len(errs), errs[0])
}

// isGatewayRef says whether a parentRef names a Gateway (the default group and kind).
func isGatewayRef(pr gatewayv1.ParentReference) bool {
	g, k := gatewayv1.GroupName, "Gateway"
	if pr.Group != nil {
		g = string(*pr.Group)
	}
	if pr.Kind != nil {
		k = string(*pr.Kind)
	}
	return g == gatewayv1.GroupName && k == "Gateway"
}

// bindingSnapshot is the model's view of which Service is bound to which waypoint
// (Istio's label rules, computed by discovery.Build from namespaces, Service labels
// and the accepted waypoint Gateways), and the set of those waypoints.
func (c *Controller) bindingSnapshot() (*discovery.Snapshot, map[string]bool, error) {
	gws, err := c.gateways.List(labels.Everything())
	if err != nil {
		return nil, nil, err
	}
	nss, err := c.nss.List(labels.Everything())
	if err != nil {
		return nil, nil, err
	}
	svcs, err := c.services.List(labels.Everything())
	if err != nil {
		return nil, nil, err
	}
	var in discovery.Input
	waypoints := map[string]bool{}
	for _, gw := range gws {
		if !c.ours(gw.Spec.GatewayClassName) || validate(gw) != nil {
			continue
		}
		wp, err := discovery.WaypointOf(gw)
		if err != nil {
			continue
		}
		in.Waypoints = append(in.Waypoints, wp)
		waypoints[wp.Ref()] = true
	}
	for _, ns := range nss {
		in.Namespaces = append(in.Namespaces, &discovery.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for _, s := range svcs {
		in.Services = append(in.Services, &discovery.Service{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels})
	}
	snap, err := discovery.Build(in, discovery.EnrollmentOptions{})
	if err != nil {
		return nil, nil, err
	}
	return snap, waypoints, nil
}

// mergeParents replaces ctrl's entries of old by want (other controllers' entries
// stay first, in their order), keeping a condition's lastTransitionTime while its
// status does not change; changed says whether the result differs from old.
func mergeParents(old, want []gatewayv1.RouteParentStatus, ctrl gatewayv1.GatewayController) ([]gatewayv1.RouteParentStatus, bool) {
	var out []gatewayv1.RouteParentStatus
	var prev []gatewayv1.RouteParentStatus
	for _, p := range old {
		if p.ControllerName == ctrl {
			prev = append(prev, p)
		} else {
			out = append(out, p)
		}
	}
	for _, w := range want {
		var before []metav1.Condition
		for _, p := range prev {
			if reflect.DeepEqual(p.ParentRef, w.ParentRef) {
				before = p.Conditions
			}
		}
		conds := make([]metav1.Condition, 0, len(w.Conditions))
		for _, cnd := range w.Conditions {
			cur := append([]metav1.Condition(nil), before...)
			apimeta.SetStatusCondition(&cur, cnd)
			conds = append(conds, *apimeta.FindStatusCondition(cur, cnd.Type))
		}
		w.Conditions = conds
		out = append(out, w)
	}
	return out, !statusEqual(&out, &old)
}
