// Package controller is the Kubernetes waypoint controller: for every Gateway of the
// waypoint class it creates and owns the waypoint's ServiceAccount, Deployment, Service
// and CA root ConfigMap, binds the chart's ambit-waypoint ClusterRole to the account,
// and writes the status of the GatewayClass, the Gateways and the HTTPRoutes and
// GRPCRoutes attached to Services bound to waypoints (docs/waypoint.md).
//
// It reconciles from informer caches on every event and every resync and writes only
// what differs, so a steady cluster sees no writes. It runs in its own process
// (cmd/ambit-controller) with its own RBAC, never in the CA's.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gwlisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
)

// Deps are the controller's collaborators; nil clients are built from
// Config.Kubeconfig.
type Deps struct {
	Logger  *slog.Logger
	Kube    kubernetes.Interface
	Gateway gwclient.Interface
}

// Queue keys besides "gw/<namespace>/<name>".
const (
	keyClass  = "class"
	keyRoutes = "routes"
	keyGC     = "gc"
	gwPrefix  = "gw/"
)

// crdPollInterval is how often a cluster without the Gateway API is asked again.
const crdPollInterval = 10 * time.Second

// Log messages and keys.
const (
	msgNoCRDs          = "Gateway API not served: waiting for its CRDs"
	msgReconcileFailed = "reconcile failed"
	msgGatewayInvalid  = "waypoint Gateway not accepted"
	msgConflict        = "waypoint object conflict"
	msgForeignClass    = "waypoint GatewayClass belongs to another controller: its Gateways are left alone"
	msgClassCreated    = "created the waypoint GatewayClass"
	msgBindingDeleted  = "deleted the ClusterRoleBinding of a gone waypoint"
	msgRouteStatus     = "route status written"
	msgRouteBinding    = "cannot compute waypoint bindings: route status not written"
	msgStarted         = "waypoint controller started"
	keyError           = "error"
	keyKey             = "key"
	keyGateway         = "gateway"
	keyReason          = "reason"
	keyClassName       = "class"
	keyController      = "controller"
	keyRoute           = "route"
	keyBinding         = "binding"
)

// Controller is the waypoint controller. Use New, then Run.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	kube  kubernetes.Interface
	gw    gwclient.Interface
	queue workqueue.TypedRateLimitingInterface[string]
	poll  time.Duration

	// Caches, set by start.
	gateways  gwlisters.GatewayLister
	classes   gwlisters.GatewayClassLister
	httpRts   gwlisters.HTTPRouteLister
	grpcRts   gwlisters.GRPCRouteLister // nil when GRPCRoute is not served
	grants    gwlisters.ReferenceGrantLister
	services  corelisters.ServiceLister
	nss       corelisters.NamespaceLister
	accounts  corelisters.ServiceAccountLister
	cms       corelisters.ConfigMapLister
	roots     corelisters.ConfigMapLister
	deploys   appslisters.DeploymentLister
	bindings  rbaclisters.ClusterRoleBindingLister
	factories []interface{ Shutdown() }
}

// New validates cfg and builds a controller; nothing is contacted until Run.
func New(cfg Config, deps Deps) (*Controller, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{cfg: cfg, log: log, kube: deps.Kube, gw: deps.Gateway, poll: crdPollInterval}
	if c.kube == nil || c.gw == nil {
		rc, err := kube.RestConfig(cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		rc.UserAgent = ManagedBy
		if c.kube == nil {
			if c.kube, err = kubernetes.NewForConfig(rc); err != nil {
				return nil, fmt.Errorf("kubernetes client: %w", err)
			}
		}
		if c.gw == nil {
			if c.gw, err = gwclient.NewForConfig(rc); err != nil {
				return nil, fmt.Errorf("gateway api client: %w", err)
			}
		}
	}
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: ManagedBy})
	return c, nil
}

// Run reconciles until ctx ends. Without the Gateway API CRDs it waits for them.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	grpc, err := c.awaitCRDs(ctx)
	if err != nil {
		return err
	}
	if err := c.start(ctx, grpc); err != nil {
		return err
	}
	defer func() {
		for _, f := range c.factories {
			f.Shutdown()
		}
	}()
	c.log.Info(msgStarted, keyClassName, c.cfg.WaypointClass, keyController, c.cfg.ControllerName)
	c.enqueueAll()
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	if c.cfg.Resync > 0 {
		go func() {
			t := time.NewTicker(c.cfg.Resync)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					c.queue.Add(keyGC)
				}
			}
		}()
	}
	for c.next(ctx) {
	}
	return nil
}

// awaitCRDs waits until the API server serves Gateways and HTTPRoutes, and says
// whether it serves GRPCRoutes.
func (c *Controller) awaitCRDs(ctx context.Context) (bool, error) {
	warned := false
	for {
		list, err := c.kube.Discovery().ServerResourcesForGroupVersion(gatewayv1.GroupVersion.String())
		if err == nil {
			has := map[string]bool{}
			for _, r := range list.APIResources {
				has[r.Name] = true
			}
			if has["gateways"] && has["gatewayclasses"] && has["httproutes"] && has["referencegrants"] {
				return has["grpcroutes"], nil
			}
		} else if !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("discover %s: %w", gatewayv1.GroupVersion, err)
		}
		if !warned {
			c.log.Warn(msgNoCRDs)
			warned = true
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(c.poll):
		}
	}
}

func (c *Controller) start(ctx context.Context, grpc bool) error {
	managed := labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy}).String()
	all := informers.NewSharedInformerFactory(c.kube, c.cfg.Resync)
	own := informers.NewSharedInformerFactoryWithOptions(c.kube, c.cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = managed }))
	rootNS, rootName, _ := strings.Cut(c.cfg.CARootConfigMap, "/")
	root := informers.NewSharedInformerFactoryWithOptions(c.kube, c.cfg.Resync, informers.WithNamespace(rootNS),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", rootName).String()
		}))
	gwf := gwinformers.NewSharedInformerFactory(c.gw, c.cfg.Resync)
	v1 := gwf.Gateway().V1()

	c.gateways, c.classes = v1.Gateways().Lister(), v1.GatewayClasses().Lister()
	c.httpRts, c.grants = v1.HTTPRoutes().Lister(), v1.ReferenceGrants().Lister()
	c.services, c.nss = all.Core().V1().Services().Lister(), all.Core().V1().Namespaces().Lister()
	c.accounts, c.cms = own.Core().V1().ServiceAccounts().Lister(), own.Core().V1().ConfigMaps().Lister()
	c.deploys, c.bindings = own.Apps().V1().Deployments().Lister(), own.Rbac().V1().ClusterRoleBindings().Lister()
	c.roots = root.Core().V1().ConfigMaps().Lister()

	handlers := []struct {
		inf cache.SharedIndexInformer
		h   func(any)
	}{
		{v1.Gateways().Informer(), func(o any) { c.enqueueObj(o); c.queue.Add(keyRoutes) }},
		// The class decides which Gateways are the controller's.
		{v1.GatewayClasses().Informer(), func(any) { c.queue.Add(keyClass); c.enqueueGateways() }},
		{v1.HTTPRoutes().Informer(), func(any) { c.queue.Add(keyRoutes) }},
		{v1.ReferenceGrants().Informer(), func(any) { c.queue.Add(keyRoutes) }},
		{all.Core().V1().Services().Informer(), func(o any) { c.enqueueOwner(o); c.queue.Add(keyRoutes) }},
		{all.Core().V1().Namespaces().Informer(), func(any) { c.queue.Add(keyRoutes) }},
		{own.Core().V1().ServiceAccounts().Informer(), c.enqueueOwner},
		{own.Core().V1().ConfigMaps().Informer(), c.enqueueOwner},
		{own.Apps().V1().Deployments().Informer(), c.enqueueOwner},
		{own.Rbac().V1().ClusterRoleBindings().Informer(), c.enqueueOwner},
		{root.Core().V1().ConfigMaps().Informer(), func(any) { c.enqueueGateways() }},
	}
	if grpc {
		c.grpcRts = v1.GRPCRoutes().Lister()
		handlers = append(handlers, struct {
			inf cache.SharedIndexInformer
			h   func(any)
		}{v1.GRPCRoutes().Informer(), func(any) { c.queue.Add(keyRoutes) }})
	}
	for _, h := range handlers {
		fn := h.h
		if _, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    fn,
			UpdateFunc: func(_, o any) { fn(o) },
			DeleteFunc: fn,
		}); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
	}
	c.factories = []interface{ Shutdown() }{all, own, root, gwf}
	all.Start(ctx.Done())
	own.Start(ctx.Done())
	root.Start(ctx.Done())
	gwf.Start(ctx.Done())
	for _, synced := range []map[string]bool{typeNames(all.WaitForCacheSync(ctx.Done())), typeNames(own.WaitForCacheSync(ctx.Done())),
		typeNames(root.WaitForCacheSync(ctx.Done())), typeNames(gwf.WaitForCacheSync(ctx.Done()))} {
		for typ, ok := range synced {
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("sync the %s cache", typ)
			}
		}
	}
	return nil
}

func typeNames[K comparable](m map[K]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[fmt.Sprint(k)] = v
	}
	return out
}

// enqueueObj queues a Gateway (or its tombstone).
func (c *Controller) enqueueObj(o any) {
	if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o); err == nil {
		c.queue.Add(gwPrefix + k)
	}
}

// enqueueOwner queues the Gateway of an object the controller wrote, known by its
// labels (a ClusterRoleBinding names the Gateway's namespace in a label of its own).
func (c *Controller) enqueueOwner(o any) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	m, err := metaOf(o)
	if err != nil {
		return
	}
	l := m.GetLabels()
	name, ok := l[discovery.LabelGatewayName]
	if !ok || l[LabelManagedBy] != ManagedBy {
		return
	}
	ns := m.GetNamespace()
	if ns == "" {
		ns = l[LabelGatewayNamespace]
	}
	c.queue.Add(gwPrefix + ns + "/" + name)
}

func metaOf(o any) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T is not an object", o)
	}
	return m, nil
}

func (c *Controller) enqueueGateways() {
	gws, err := c.gateways.List(labels.Everything())
	if err != nil {
		return
	}
	for _, g := range gws {
		c.queue.Add(gwPrefix + g.Namespace + "/" + g.Name)
	}
}

func (c *Controller) enqueueAll() {
	c.queue.Add(keyClass)
	c.queue.Add(keyRoutes)
	c.queue.Add(keyGC)
	c.enqueueGateways()
}

// next reconciles one key; false once the queue is shut down.
func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.reconcile(ctx, key); err != nil {
		if ctx.Err() != nil {
			return true
		}
		c.log.Error(msgReconcileFailed, keyKey, key, keyError, err)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

func (c *Controller) reconcile(ctx context.Context, key string) error {
	switch key {
	case keyClass:
		return c.reconcileClass(ctx)
	case keyRoutes:
		return c.reconcileRoutes(ctx)
	case keyGC:
		return c.collect(ctx)
	}
	ref, ok := strings.CutPrefix(key, gwPrefix)
	if !ok {
		return fmt.Errorf("unknown queue key %q", key)
	}
	ns, name, _ := strings.Cut(ref, "/")
	return c.reconcileGateway(ctx, ns, name)
}

// ours says whether class is the waypoint class and this controller answers for it.
// A class that does not exist yet is the controller's to create.
func (c *Controller) ours(class gatewayv1.ObjectName) bool {
	if string(class) != c.cfg.WaypointClass {
		return false
	}
	gc, err := c.classes.Get(string(class))
	if apierrors.IsNotFound(err) {
		return true
	}
	return err == nil && string(gc.Spec.ControllerName) == c.cfg.ControllerName
}

// reconcileClass creates the waypoint GatewayClass when it is missing (as Istio does)
// and accepts it when it names this controller.
func (c *Controller) reconcileClass(ctx context.Context) error {
	gc, err := c.classes.Get(c.cfg.WaypointClass)
	if apierrors.IsNotFound(err) {
		desc := "Ambit waypoints (L7 proxies of the ambient mesh)"
		gc = &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: c.cfg.WaypointClass, Labels: map[string]string{LabelManagedBy: ManagedBy}},
			Spec:       gatewayv1.GatewayClassSpec{ControllerName: gatewayv1.GatewayController(c.cfg.ControllerName), Description: &desc},
		}
		created, err := c.gw.GatewayV1().GatewayClasses().Create(ctx, gc, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return nil // the informer brings it
		}
		if err != nil {
			return fmt.Errorf("create GatewayClass %s: %w", c.cfg.WaypointClass, err)
		}
		c.log.Info(msgClassCreated, keyClassName, c.cfg.WaypointClass)
		gc = created
	} else if err != nil {
		return err
	}
	if string(gc.Spec.ControllerName) != c.cfg.ControllerName {
		c.log.Warn(msgForeignClass, keyClassName, gc.Name, keyController, gc.Spec.ControllerName)
		return nil
	}
	st := gc.Status.DeepCopy()
	setCondition(&st.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted), true,
		string(gatewayv1.GatewayClassReasonAccepted), "Ambit runs the waypoints of this class", gc.Generation)
	if statusEqual(st, &gc.Status) {
		return nil
	}
	cp := gc.DeepCopy()
	cp.Status = *st
	if _, err := c.gw.GatewayV1().GatewayClasses().UpdateStatus(ctx, cp, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("update GatewayClass %s status: %w", gc.Name, err)
	}
	return nil
}

// collect deletes the ClusterRoleBindings of Gateways that are gone or no longer
// waypoints of this controller (namespaced objects are owned by their Gateway and
// go with it).
func (c *Controller) collect(ctx context.Context) error {
	crbs, err := c.bindings.List(labels.Everything())
	if err != nil {
		return err
	}
	var errs []error
	for _, b := range crbs {
		ns, name := b.Labels[LabelGatewayNamespace], b.Labels[discovery.LabelGatewayName]
		if ns == "" || name == "" {
			continue
		}
		gw, err := c.gateways.Gateways(ns).Get(name)
		if err == nil && c.ours(gw.Spec.GatewayClassName) {
			continue
		}
		errs = append(errs, c.deleteBinding(ctx, ns, name))
	}
	return errors.Join(errs...)
}

func (c *Controller) deleteBinding(ctx context.Context, ns, name string) error {
	bn := ClusterRoleBindingName(ns, name)
	b, err := c.bindings.Get(bn)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if b.Labels[LabelManagedBy] != ManagedBy {
		return nil
	}
	err = c.kube.RbacV1().ClusterRoleBindings().Delete(ctx, bn, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &b.UID},
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete ClusterRoleBinding %s: %w", bn, err)
	}
	c.log.Info(msgBindingDeleted, keyBinding, bn, keyGateway, ns+"/"+name)
	return nil
}

// rootPEM is the CA's published root; false while there is none.
func rootPEM(l corelisters.ConfigMapLister, ref string) (string, bool) {
	ns, name, _ := strings.Cut(ref, "/")
	cm, err := l.ConfigMaps(ns).Get(name)
	if err != nil {
		return "", false
	}
	pem := cm.Data[RootKey]
	return pem, pem != ""
}
