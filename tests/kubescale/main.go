// Command kubescale is the Kubernetes scale budget benchmark (`make bench-kube`): it fills a
// real kube-apiserver with many pods, services and EndpointSlices and reports how long a real
// ztunnel takes to sync them and how much memory it holds. Not a test: it asserts nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

func main() {
	pods := flag.Int("pods", 10000, "pods to create")
	services := flag.Int("services", 1000, "services to create (each with one EndpointSlice)")
	nodes := flag.Int("nodes", 100, "nodes the pods are spread over")
	bin := flag.String("bin", "", "directory with ztunnel and ambit-ca (built if empty)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "kubescale: needs root (network namespaces, eBPF)")
		os.Exit(1)
	}
	if !netns.InPrivate() {
		if _, err := kubetest.EnsureBinaries(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "kubescale:", err)
			os.Exit(1)
		}
	}
	netns.EnterPrivate()
	if err := run(*pods, *services, *nodes, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "kubescale:", err)
		os.Exit(1)
	}
}

func run(nPods, nSvcs, nNodes int, bin string) error {
	ctx := context.Background()
	m, err := mesh.Start(ctx, mesh.Options{Nodes: 1, PodsPerNode: -1, Kube: true, BinDir: bin, ExtraArgs: []string{"-log-level=warn"}})
	if err != nil {
		return err
	}
	defer m.Close()
	node := m.Topo.Nodes[0]
	kc := m.Kube.Client()
	rssEmpty := rss(m.Ztunnel(node.Name).Pid())
	fmt.Printf("ztunnel RSS with an empty cluster: %.1f MiB\n", mib(rssEmpty))

	start := time.Now()
	if err := populate(ctx, kc, nPods, nSvcs, nNodes); err != nil {
		return err
	}
	created := time.Since(start)
	fmt.Printf("created %d pods, %d services, %d EndpointSlices in %s (%.0f objects/s)\n",
		nPods, nSvcs, nSvcs, created.Round(time.Millisecond), float64(nPods+2*nSvcs)/created.Seconds())

	// Live: how long after the last write the running ztunnel's model holds everything.
	live := time.Now()
	if err := waitModel(ctx, m, node, nPods, nSvcs); err != nil {
		return err
	}
	fmt.Printf("running ztunnel caught up %s after the last write\n", time.Since(live).Round(time.Millisecond))
	rssLive := rss(m.Ztunnel(node.Name).Pid())

	// Cold: a ztunnel started against the full cluster, until ready (informers synced).
	if err := m.StopZtunnel(node); err != nil {
		return err
	}
	cold := time.Now()
	if err := m.StartZtunnel(ctx, node); err != nil {
		return err
	}
	coldSync := time.Since(cold)
	if err := waitModel(ctx, m, node, nPods, nSvcs); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // let the first GC cycles settle
	rssCold := rss(m.Ztunnel(node.Name).Pid())
	heap := heapInUse(ctx, m, node)

	fmt.Printf("\nScale budget: %d pods on %d nodes, %d services (load average %s)\n", nPods, nNodes, nSvcs, loadavg())
	fmt.Printf("| measure | value |\n|---|---|\n")
	fmt.Printf("| cold start to ready (model synced) | %s |\n", coldSync.Round(time.Millisecond))
	fmt.Printf("| ztunnel RSS, empty cluster | %.1f MiB |\n", mib(rssEmpty))
	fmt.Printf("| ztunnel RSS after following the creation live | %.1f MiB |\n", mib(rssLive))
	fmt.Printf("| ztunnel RSS after a cold sync | %.1f MiB |\n", mib(rssCold))
	fmt.Printf("| per pod (cold RSS over empty) | %.1f KiB |\n", float64(rssCold-rssEmpty)/1024/float64(nPods))
	fmt.Printf("| Go heap in use after a cold sync | %.1f MiB |\n", mib(heap))
	return nil
}

// populate creates namespaces, pods (with status addresses), services and slices.
func populate(ctx context.Context, kc kubernetes.Interface, nPods, nSvcs, nNodes int) error {
	const nNamespaces = 10
	for i := 0; i < nNamespaces; i++ {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%d", i),
			Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}
		if _, err := kc.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	podsPerSvc := max(1, nPods/max(1, nSvcs))
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	work := make(chan func() error)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if err := f(); err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
				}
			}
		}()
	}
	for i := 0; i < nPods; i++ {
		i := i
		work <- func() error {
			ns := fmt.Sprintf("scale-%d", i%nNamespaces)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Namespace: ns,
					Labels: map[string]string{"app": fmt.Sprintf("svc-%d", i/podsPerSvc), "tier": "scale"}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("scale-node-%d", i%nNodes), ServiceAccountName: fmt.Sprintf("sa-%d", i%50),
					Containers: []corev1.Container{{Name: "app", Image: "app"}}},
			}
			p, err := kc.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			ip := podIP(i).String()
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
			_, err = kc.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err
		}
	}
	for s := 0; s < nSvcs; s++ {
		s := s
		work <- func() error {
			ns := fmt.Sprintf("scale-%d", (s*podsPerSvc)%nNamespaces)
			name := fmt.Sprintf("svc-%d", s)
			vip := netip.AddrFrom4([4]byte{198, 19, byte(1 + s/250), byte(1 + s%250)})
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec: corev1.ServiceSpec{ClusterIP: vip.String(), Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
			if _, err := kc.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				return err
			}
			port, pname, ready := int32(8080), "http", true
			slice := &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
			}
			for k := 0; k < podsPerSvc; k++ {
				i := s*podsPerSvc + k
				if i >= nPods {
					break
				}
				slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{podIP(i).String()},
					Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
			}
			_, err := kc.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
			return err
		}
	}
	close(work)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d object writes failed, first: %w", n, firstErr)
	}
	return nil
}

// podIP spreads pods over 198.18.64.0/18, clear of the topology's own addresses.
func podIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(64 + i/250), byte(1 + i%250)})
}

func waitModel(ctx context.Context, m *mesh.Mesh, n *netns.Node, pods, svcs int) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		d, err := m.Dump(ctx, n)
		if err == nil && len(d.Workloads) >= pods && len(d.Services) >= svcs {
			return nil
		}
		if time.Now().After(deadline) {
			got := "?"
			if d != nil {
				got = fmt.Sprintf("%d workloads, %d services", len(d.Workloads), len(d.Services))
			}
			return fmt.Errorf("model did not reach %d pods/%d services (%s, %v)", pods, svcs, got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			kb, _ := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// heapInUse reads go_memstats_heap_inuse_bytes from ztunnel's metrics: live heap, without
// the garbage and free pages RSS also counts.
func heapInUse(ctx context.Context, m *mesh.Mesh, n *netns.Node) int64 {
	text, err := m.Metrics(ctx, n)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f)
		}
	}
	return 0
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
