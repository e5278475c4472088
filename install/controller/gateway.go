package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/discovery"
)

// errConflict marks an object the controller would write that exists and is not its
// own: the Gateway is not programmed, and the object is left alone.
var errConflict = errors.New("conflict")

// invalid is why a waypoint Gateway is not accepted.
type invalid struct {
	reason gatewayv1.GatewayConditionReason
	msg    string
	// listeners are the per-listener reasons (by index), "" for a valid one.
	listeners []gatewayv1.ListenerConditionReason
}

// validate checks gw as a waypoint: exactly one listener, HBONE on 15008, what
// discovery.WaypointOf reads, a name that fits a label, no static addresses.
func validate(gw *gatewayv1.Gateway) *invalid {
	lr := make([]gatewayv1.ListenerConditionReason, len(gw.Spec.Listeners))
	var bad []string
	for i, l := range gw.Spec.Listeners {
		switch {
		case string(l.Protocol) != discovery.WaypointProtocol:
			lr[i] = gatewayv1.ListenerReasonUnsupportedProtocol
			bad = append(bad, fmt.Sprintf("listener %q: protocol %s, a waypoint takes only %s", l.Name, l.Protocol, discovery.WaypointProtocol))
		case l.Port != discovery.WaypointPort:
			lr[i] = gatewayv1.ListenerReasonPortUnavailable
			bad = append(bad, fmt.Sprintf("listener %q: port %d, a waypoint listens on %d only", l.Name, l.Port, discovery.WaypointPort))
		case i > 0:
			lr[i] = gatewayv1.ListenerReasonPortUnavailable
			bad = append(bad, fmt.Sprintf("listener %q: a waypoint has one %s listener", l.Name, discovery.WaypointProtocol))
		}
	}
	if len(bad) > 0 {
		return &invalid{gatewayv1.GatewayReasonListenersNotValid, joinMsgs(bad), lr}
	}
	if _, err := discovery.WaypointOf(gw); err != nil {
		return &invalid{gatewayv1.GatewayReasonListenersNotValid, err.Error(), lr}
	}
	if f := discovery.WaypointFor(gw.Labels[discovery.LabelWaypointFor]); f != "" {
		switch f {
		case discovery.WaypointForService, discovery.WaypointForWorkload, discovery.WaypointForAll, discovery.WaypointForNone:
		default:
			return &invalid{gatewayv1.GatewayReasonInvalid, fmt.Sprintf("label %s=%q is not service, workload, all or none", discovery.LabelWaypointFor, f), lr}
		}
	}
	if errs := validation.IsDNS1123Label(gw.Name); len(errs) > 0 {
		return &invalid{gatewayv1.GatewayReasonInvalid, fmt.Sprintf("name %q cannot name the waypoint's Deployment and label its pods: %s", gw.Name, joinMsgs(errs)), lr}
	}
	if len(gw.Spec.Addresses) > 0 {
		return &invalid{gatewayv1.GatewayReasonUnsupportedAddress, "spec.addresses is not supported: a waypoint's address is its Service's ClusterIP", lr}
	}
	if gw.Spec.Infrastructure != nil && gw.Spec.Infrastructure.ParametersRef != nil {
		return &invalid{gatewayv1.GatewayReasonInvalidParameters, "spec.infrastructure.parametersRef is not supported", lr}
	}
	return nil
}

func joinMsgs(ms []string) string {
	out := ""
	for i, m := range ms {
		if i > 0 {
			out += "; "
		}
		out += m
	}
	return out
}

// reconcileGateway brings Gateway ns/name's objects and status to what they should be.
func (c *Controller) reconcileGateway(ctx context.Context, ns, name string) error {
	gw, err := c.gateways.Gateways(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return c.deleteBinding(ctx, ns, name)
	}
	if err != nil {
		return err
	}
	if !c.ours(gw.Spec.GatewayClassName) {
		return c.deleteBinding(ctx, ns, name)
	}
	if bad := validate(gw); bad != nil {
		// Logged when the status changes, not on every resync.
		wrote, err := c.writeGatewayStatus(ctx, gw, gatewayState{invalid: bad})
		if wrote {
			c.log.Warn(msgGatewayInvalid, keyGateway, ns+"/"+name, keyReason, bad.reason, keyError, bad.msg)
		}
		return err
	}
	pem, havePEM := rootPEM(c.roots, c.cfg.CARootConfigMap)
	d := c.cfg.build(gw, pem)
	st := gatewayState{}
	// In this order, stopping at the first object in the way: nothing runs as, or is
	// bound to, an account the controller does not manage.
	var svc *corev1.Service
	var dep *appsv1.Deployment
	steps := []func() error{
		func() error { _, err := ensure(ctx, c, gw, "ServiceAccount", d.sa, accountOps(c)); return err },
		func() error {
			if d.root == nil {
				return nil
			}
			_, err := ensure(ctx, c, gw, "ConfigMap", d.root, configMapOps(c))
			return err
		},
		func() (err error) { svc, err = ensure(ctx, c, gw, "Service", d.svc, serviceOps(c)); return err },
		func() (err error) {
			dep, err = ensure(ctx, c, gw, "Deployment", d.deploy, deploymentOps(c))
			return err
		},
		func() error { _, err := ensure(ctx, c, gw, "ClusterRoleBinding", d.binding, bindingOps(c)); return err },
	}
	for _, step := range steps {
		err := step()
		if errors.Is(err, errConflict) {
			st.conflict = err.Error()
			break
		}
		if err != nil {
			return err
		}
	}
	st.rootMissing = !havePEM
	if svc != nil {
		st.addresses = clusterIPs(svc)
	}
	if dep != nil {
		st.ready, st.want = dep.Status.ReadyReplicas, 1
		if dep.Spec.Replicas != nil {
			st.want = *dep.Spec.Replicas
		}
	}
	wrote, err := c.writeGatewayStatus(ctx, gw, st)
	if wrote && st.conflict != "" {
		c.log.Warn(msgConflict, keyGateway, ns+"/"+name, keyError, st.conflict)
	}
	return err
}

func clusterIPs(svc *corev1.Service) []string {
	var out []string
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if _, err := netip.ParseAddr(ip); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// ops are the reads and writes of one kind the controller owns.
type ops[T metav1.Object] struct {
	get    func(ns, name string) (T, error) // the cache
	fetch  func(ctx context.Context, ns, name string) (T, error)
	create func(ctx context.Context, o T) (T, error)
	update func(ctx context.Context, o T) (T, error)
	// merge returns cur with want's content (what the controller owns of it).
	merge func(cur, want T) T
	// content is what is hashed of want besides labels and owners.
	content func(want T) any
}

// ensure creates want or updates the existing object when what the controller wrote
// differs (by AnnotationSpecHash); an existing object the controller does not manage
// for gw is a conflict and stays as it is. It returns the object as stored.
func ensure[T metav1.Object](ctx context.Context, c *Controller, gw *gatewayv1.Gateway, kind string, want T, o ops[T]) (T, error) {
	var zero T
	hash := specHash(want.GetLabels(), want.GetOwnerReferences(), o.content(want))
	setAnnotation(want, AnnotationSpecHash, hash)
	what := kind + " " + want.GetName()
	if want.GetNamespace() != "" {
		what = kind + " " + want.GetNamespace() + "/" + want.GetName()
	}
	cur, err := o.get(want.GetNamespace(), want.GetName())
	if apierrors.IsNotFound(err) {
		created, err := o.create(ctx, want)
		if err == nil {
			return created, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return zero, fmt.Errorf("create %s: %w", what, err)
		}
		// Not in the cache: not labelled as the controller's, or the cache lags.
		if cur, err = o.fetch(ctx, want.GetNamespace(), want.GetName()); err != nil {
			return zero, fmt.Errorf("get %s: %w", what, err)
		}
	} else if err != nil {
		return zero, err
	}
	if !ownedBy(cur, gw) {
		return zero, fmt.Errorf("%w: %s exists and is not managed by %s for this Gateway: delete or rename it", errConflict, what, ManagedBy)
	}
	if cur.GetAnnotations()[AnnotationSpecHash] == hash {
		return cur, nil
	}
	next := o.merge(cur, want)
	l := next.GetLabels()
	if l == nil {
		l = map[string]string{}
	}
	for k, v := range want.GetLabels() {
		l[k] = v
	}
	next.SetLabels(l)
	if want.GetNamespace() != "" {
		next.SetOwnerReferences(want.GetOwnerReferences())
	}
	setAnnotation(next, AnnotationSpecHash, hash)
	updated, err := o.update(ctx, next)
	if err != nil {
		return zero, fmt.Errorf("update %s: %w", what, err)
	}
	return updated, nil
}

// ownedBy says whether the controller manages o for gw: its label, and for a
// namespaced object no controller owner but a Gateway of gw's name (an object of a
// deleted Gateway of the same name is taken over).
func ownedBy(o metav1.Object, gw *gatewayv1.Gateway) bool {
	l := o.GetLabels()
	if l[LabelManagedBy] != ManagedBy || l[discovery.LabelGatewayName] != gw.Name {
		return false
	}
	if o.GetNamespace() == "" {
		return l[LabelGatewayNamespace] == gw.Namespace
	}
	for _, r := range o.GetOwnerReferences() {
		if r.Controller != nil && *r.Controller && (r.Kind != "Gateway" || r.Name != gw.Name || r.APIVersion != gatewayv1.GroupVersion.String()) {
			return false
		}
	}
	return true
}

func setAnnotation(o metav1.Object, k, v string) {
	a := o.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	a[k] = v
	o.SetAnnotations(a)
}

var createOpts = metav1.CreateOptions{FieldManager: FieldManager}
var updateOpts = metav1.UpdateOptions{FieldManager: FieldManager}

func accountOps(c *Controller) ops[*corev1.ServiceAccount] {
	api := func(ns string) interface {
		Get(context.Context, string, metav1.GetOptions) (*corev1.ServiceAccount, error)
		Create(context.Context, *corev1.ServiceAccount, metav1.CreateOptions) (*corev1.ServiceAccount, error)
		Update(context.Context, *corev1.ServiceAccount, metav1.UpdateOptions) (*corev1.ServiceAccount, error)
	} {
		return c.kube.CoreV1().ServiceAccounts(ns)
	}
	return ops[*corev1.ServiceAccount]{
		get: func(ns, n string) (*corev1.ServiceAccount, error) { return c.accounts.ServiceAccounts(ns).Get(n) },
		fetch: func(ctx context.Context, ns, n string) (*corev1.ServiceAccount, error) {
			return api(ns).Get(ctx, n, metav1.GetOptions{})
		},
		create: func(ctx context.Context, o *corev1.ServiceAccount) (*corev1.ServiceAccount, error) {
			return api(o.Namespace).Create(ctx, o, createOpts)
		},
		update: func(ctx context.Context, o *corev1.ServiceAccount) (*corev1.ServiceAccount, error) {
			return api(o.Namespace).Update(ctx, o, updateOpts)
		},
		merge:   func(cur, _ *corev1.ServiceAccount) *corev1.ServiceAccount { return cur.DeepCopy() },
		content: func(*corev1.ServiceAccount) any { return nil },
	}
}

func configMapOps(c *Controller) ops[*corev1.ConfigMap] {
	api := c.kube.CoreV1().ConfigMaps
	return ops[*corev1.ConfigMap]{
		get: func(ns, n string) (*corev1.ConfigMap, error) { return c.cms.ConfigMaps(ns).Get(n) },
		fetch: func(ctx context.Context, ns, n string) (*corev1.ConfigMap, error) {
			return api(ns).Get(ctx, n, metav1.GetOptions{})
		},
		create: func(ctx context.Context, o *corev1.ConfigMap) (*corev1.ConfigMap, error) {
			return api(o.Namespace).Create(ctx, o, createOpts)
		},
		update: func(ctx context.Context, o *corev1.ConfigMap) (*corev1.ConfigMap, error) {
			return api(o.Namespace).Update(ctx, o, updateOpts)
		},
		merge: func(cur, want *corev1.ConfigMap) *corev1.ConfigMap {
			n := cur.DeepCopy()
			n.Data = want.Data
			return n
		},
		content: func(w *corev1.ConfigMap) any { return w.Data },
	}
}

func serviceOps(c *Controller) ops[*corev1.Service] {
	api := c.kube.CoreV1().Services
	return ops[*corev1.Service]{
		get: func(ns, n string) (*corev1.Service, error) { return c.services.Services(ns).Get(n) },
		fetch: func(ctx context.Context, ns, n string) (*corev1.Service, error) {
			return api(ns).Get(ctx, n, metav1.GetOptions{})
		},
		create: func(ctx context.Context, o *corev1.Service) (*corev1.Service, error) {
			return api(o.Namespace).Create(ctx, o, createOpts)
		},
		update: func(ctx context.Context, o *corev1.Service) (*corev1.Service, error) {
			return api(o.Namespace).Update(ctx, o, updateOpts)
		},
		merge: func(cur, want *corev1.Service) *corev1.Service {
			// The ClusterIPs and the server's defaults stay.
			n := cur.DeepCopy()
			n.Spec.Type, n.Spec.Selector, n.Spec.Ports = want.Spec.Type, want.Spec.Selector, want.Spec.Ports
			return n
		},
		content: func(w *corev1.Service) any { return w.Spec },
	}
}

func deploymentOps(c *Controller) ops[*appsv1.Deployment] {
	api := c.kube.AppsV1().Deployments
	return ops[*appsv1.Deployment]{
		get: func(ns, n string) (*appsv1.Deployment, error) { return c.deploys.Deployments(ns).Get(n) },
		fetch: func(ctx context.Context, ns, n string) (*appsv1.Deployment, error) {
			return api(ns).Get(ctx, n, metav1.GetOptions{})
		},
		create: func(ctx context.Context, o *appsv1.Deployment) (*appsv1.Deployment, error) {
			return api(o.Namespace).Create(ctx, o, createOpts)
		},
		update: func(ctx context.Context, o *appsv1.Deployment) (*appsv1.Deployment, error) {
			return api(o.Namespace).Update(ctx, o, updateOpts)
		},
		merge: func(cur, want *appsv1.Deployment) *appsv1.Deployment {
			n := cur.DeepCopy()
			n.Spec = want.Spec
			return n
		},
		content: func(w *appsv1.Deployment) any { return w.Spec },
	}
}

func bindingOps(c *Controller) ops[*rbacv1.ClusterRoleBinding] {
	api := c.kube.RbacV1().ClusterRoleBindings()
	return ops[*rbacv1.ClusterRoleBinding]{
		get: func(_, n string) (*rbacv1.ClusterRoleBinding, error) { return c.bindings.Get(n) },
		fetch: func(ctx context.Context, _, n string) (*rbacv1.ClusterRoleBinding, error) {
			return api.Get(ctx, n, metav1.GetOptions{})
		},
		create: func(ctx context.Context, o *rbacv1.ClusterRoleBinding) (*rbacv1.ClusterRoleBinding, error) {
			return api.Create(ctx, o, createOpts)
		},
		update: func(ctx context.Context, o *rbacv1.ClusterRoleBinding) (*rbacv1.ClusterRoleBinding, error) {
			return api.Update(ctx, o, updateOpts)
		},
		merge: func(cur, want *rbacv1.ClusterRoleBinding) *rbacv1.ClusterRoleBinding {
			// roleRef is immutable and always the same.
			n := cur.DeepCopy()
			n.Subjects = want.Subjects
			return n
		},
		content: func(w *rbacv1.ClusterRoleBinding) any { return []any{w.RoleRef, w.Subjects} },
	}
}
