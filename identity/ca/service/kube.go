package service

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

const byNodeIndex = "node"

// podInformer finds pods (those scheduled on a node, and one by name) from a watch on
// the API server (pods only: the CA needs no more than that), for ca.PodAuthorizer.
type podInformer struct {
	informer cache.SharedIndexInformer
}

func newPodInformer(client kubernetes.Interface) (*podInformer, error) {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0)
	inf := f.Core().V1().Pods().Informer()
	if err := inf.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			// Keep only what authorization reads.
			var labels map[string]string
			if gw, ok := p.Labels[discovery.LabelGatewayName]; ok {
				labels = map[string]string{discovery.LabelGatewayName: gw}
			}
			return &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion, Labels: labels},
				Spec:       corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName, HostNetwork: p.Spec.HostNetwork},
				Status:     corev1.PodStatus{Phase: p.Status.Phase},
			}, nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	if err := inf.AddIndexers(cache.Indexers{byNodeIndex: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" {
			return nil, nil
		}
		return []string{p.Spec.NodeName}, nil
	}}); err != nil {
		return nil, err
	}
	return &podInformer{informer: inf}, nil
}

// Run watches pods until ctx ends.
func (a *podInformer) Run(ctx context.Context) { a.informer.Run(ctx.Done()) }

// PodsOnNode implements ca.PodLister.
func (a *podInformer) PodsOnNode(node string) ([]ca.Pod, error) {
	if !a.informer.HasSynced() {
		return nil, fmt.Errorf("pods not synced yet: %w", identity.ErrUnavailable)
	}
	objs, err := a.informer.GetIndexer().ByIndex(byNodeIndex, node)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", identity.ErrUnavailable, err)
	}
	pods := make([]ca.Pod, 0, len(objs))
	for _, o := range objs {
		pods = append(pods, caPod(o.(*corev1.Pod)))
	}
	return pods, nil
}

// Pod implements ca.PodLister.
func (a *podInformer) Pod(namespace, name string) (ca.Pod, bool, error) {
	if !a.informer.HasSynced() {
		return ca.Pod{}, false, fmt.Errorf("pods not synced yet: %w", identity.ErrUnavailable)
	}
	o, ok, err := a.informer.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil {
		return ca.Pod{}, false, fmt.Errorf("%w: %w", identity.ErrUnavailable, err)
	}
	if !ok {
		return ca.Pod{}, false, nil
	}
	return caPod(o.(*corev1.Pod)), true, nil
}

func caPod(p *corev1.Pod) ca.Pod {
	return ca.Pod{
		Namespace:      p.Namespace,
		Name:           p.Name,
		UID:            string(p.UID),
		ServiceAccount: p.Spec.ServiceAccountName,
		HostNetwork:    p.Spec.HostNetwork,
		Finished:       p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		Gateway:        p.Labels[discovery.LabelGatewayName],
	}
}

// publishRoot writes the root certificate into a ConfigMap that every ztunnel mounts.
// It needs only get, create and update on that one ConfigMap.
func publishRoot(ctx context.Context, client kubernetes.Interface, ref, rootFile string, log *slog.Logger) error {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("-root-configmap %q: want namespace/name", ref)
	}
	pem, err := os.ReadFile(rootFile)
	if err != nil {
		return fmt.Errorf("read root: %w", err)
	}
	for attempt := 0; ; attempt++ {
		err := upsertRoot(ctx, client, ns, name, string(pem))
		if err == nil {
			log.Info("root certificate published", "configmap", ref)
			return nil
		}
		if attempt >= 10 || ctx.Err() != nil {
			return fmt.Errorf("publish root to configmap %s: %w", ref, err)
		}
		log.Warn("publish root certificate", "configmap", ref, "error", err)
		select {
		case <-time.After(time.Duration(attempt+1) * time.Second):
		case <-ctx.Done():
		}
	}
}

func upsertRoot(ctx context.Context, client kubernetes.Interface, ns, name, pem string) error {
	cms := client.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "ambit"}},
			Data:       map[string]string{"root.pem": pem},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data["root.pem"] == pem {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data["root.pem"] = pem
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := kube.RestConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}
