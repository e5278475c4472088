package controller

import (
	"context"
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// gatewayState is what a reconcile found, for the Gateway's status.
type gatewayState struct {
	invalid     *invalid
	conflict    string // an object that is not the controller's, "" for none
	rootMissing bool
	addresses   []string
	ready, want int32
}

// setCondition sets a condition of type t, keeping its lastTransitionTime when its
// status does not change (meta.SetStatusCondition).
func setCondition(conds *[]metav1.Condition, t string, ok bool, reason, msg string, gen int64) {
	st := metav1.ConditionTrue
	if !ok {
		st = metav1.ConditionFalse
	}
	apimeta.SetStatusCondition(conds, metav1.Condition{Type: t, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen})
}

func statusEqual[T any](a, b *T) bool { return equality.Semantic.DeepEqual(a, b) }

// programmed is the Programmed condition of a valid Gateway.
func (s gatewayState) programmed() (bool, gatewayv1.GatewayConditionReason, string) {
	switch {
	case s.conflict != "":
		return false, gatewayv1.GatewayReasonInvalid, s.conflict
	case s.rootMissing:
		return false, gatewayv1.GatewayReasonPending, "waiting for the CA to publish its root certificate ConfigMap"
	case len(s.addresses) == 0:
		return false, gatewayv1.GatewayReasonAddressNotAssigned, "the waypoint's Service has no ClusterIP yet"
	case s.ready < 1:
		return false, gatewayv1.GatewayReasonPending, fmt.Sprintf("waiting for the waypoint's pods to be ready: %d of %d ready", s.ready, s.want)
	}
	return true, gatewayv1.GatewayReasonProgrammed, fmt.Sprintf("%d of %d waypoint pods ready", s.ready, s.want)
}

// writeGatewayStatus writes gw's conditions, addresses and listener statuses when
// they differ from the stored ones, and says whether it wrote.
func (c *Controller) writeGatewayStatus(ctx context.Context, gw *gatewayv1.Gateway, s gatewayState) (bool, error) {
	gen := gw.Generation
	st := gw.Status.DeepCopy()
	if s.invalid != nil {
		setCondition(&st.Conditions, string(gatewayv1.GatewayConditionAccepted), false, string(s.invalid.reason), s.invalid.msg, gen)
		setCondition(&st.Conditions, string(gatewayv1.GatewayConditionProgrammed), false, string(gatewayv1.GatewayReasonInvalid),
			"the Gateway is not accepted", gen)
		st.Addresses = nil
	} else {
		setCondition(&st.Conditions, string(gatewayv1.GatewayConditionAccepted), true, string(gatewayv1.GatewayReasonAccepted),
			"a waypoint of class "+c.cfg.WaypointClass, gen)
		ok, reason, msg := s.programmed()
		setCondition(&st.Conditions, string(gatewayv1.GatewayConditionProgrammed), ok, string(reason), msg, gen)
		st.Addresses = nil
		ipType := gatewayv1.IPAddressType
		for _, a := range s.addresses {
			if _, err := netip.ParseAddr(a); err == nil {
				st.Addresses = append(st.Addresses, gatewayv1.GatewayStatusAddress{Type: &ipType, Value: a})
			}
		}
	}
	st.Listeners = listenerStatuses(gw, st.Listeners, s)
	if statusEqual(st, &gw.Status) {
		return false, nil
	}
	cp := gw.DeepCopy()
	cp.Status = *st
	if _, err := c.gw.GatewayV1().Gateways(gw.Namespace).UpdateStatus(ctx, cp, updateOpts); err != nil {
		return false, fmt.Errorf("update Gateway %s/%s status: %w", gw.Namespace, gw.Name, err)
	}
	return true, nil
}

// listenerStatuses are the listeners' statuses, keeping the old conditions'
// transition times.
func listenerStatuses(gw *gatewayv1.Gateway, old []gatewayv1.ListenerStatus, s gatewayState) []gatewayv1.ListenerStatus {
	prev := map[gatewayv1.SectionName][]metav1.Condition{}
	for _, l := range old {
		prev[l.Name] = l.Conditions
	}
	gen := gw.Generation
	out := make([]gatewayv1.ListenerStatus, 0, len(gw.Spec.Listeners))
	progOK, _, progMsg := s.programmed()
	for i, l := range gw.Spec.Listeners {
		conds := append([]metav1.Condition(nil), prev[l.Name]...)
		reason := gatewayv1.ListenerConditionReason("")
		if s.invalid != nil && i < len(s.invalid.listeners) {
			reason = s.invalid.listeners[i]
		}
		switch {
		case reason != "":
			setCondition(&conds, string(gatewayv1.ListenerConditionAccepted), false, string(reason), s.invalid.msg, gen)
			setCondition(&conds, string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), s.invalid.msg, gen)
		case s.invalid != nil:
			setCondition(&conds, string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "a valid HBONE listener", gen)
			setCondition(&conds, string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "the Gateway is not accepted", gen)
		default:
			setCondition(&conds, string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "the waypoint's HBONE listener", gen)
			reason := gatewayv1.ListenerReasonProgrammed
			if !progOK {
				reason = gatewayv1.ListenerReasonPending
			}
			setCondition(&conds, string(gatewayv1.ListenerConditionProgrammed), progOK, string(reason), progMsg, gen)
		}
		setCondition(&conds, string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "no references", gen)
		// Routes attach to the Services bound to the waypoint, not to the listener.
		out = append(out, gatewayv1.ListenerStatus{Name: l.Name, SupportedKinds: []gatewayv1.RouteGroupKind{}, AttachedRoutes: 0, Conditions: conds})
	}
	return out
}
