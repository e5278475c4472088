package kubee2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

func istio(t *testing.T) istioclient.Interface {
	t.Helper()
	c, err := istioclient.NewForConfig(m.Kube.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitPolicies waits until node2's ztunnel has exactly the named policies in force.
func waitPolicies(t *testing.T, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got []string
		if d, err := m.Dump(context.Background(), m.Topo.Nodes[1]); err == nil {
			for _, p := range d.Policies {
				got = append(got, p.Name)
			}
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node2 has policies %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createAP creates the AuthorizationPolicy name whose spec fill writes, deleted at cleanup.
func createAP(t *testing.T, ic istioclient.Interface, name string, fill func(*securityv1beta1.AuthorizationPolicy)) {
	t.Helper()
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS}}
	fill(&ap.Spec)
	if _, err := ic.SecurityV1().AuthorizationPolicies(appNS).Create(context.Background(), ap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ic.SecurityV1().AuthorizationPolicies(appNS).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// refused sends payload from a pod and fails the test if any of it came back.
func refused(t *testing.T, from *netns.Pod, payload, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := mesh.RoundTrip(ctx, from, podAddr(server), []byte(payload)); err == nil && len(got) > 0 {
		t.Fatalf("%s: connection carried %q; want it refused", what, got)
	}
}

// enrolledWithPlainPod enrolls namespace apps for the test and adds pod "other" on node1,
// opted out: a plaintext client from outside the mesh (remove its label to enroll it).
func enrolledWithPlainPod(t *testing.T) *netns.Pod {
	t.Helper()
	ctx := context.Background()
	ns, err := kc.CoreV1().Namespaces().Get(ctx, appNS, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := ns.Labels["istio.io/dataplane-mode"]; ok {
		t.Cleanup(func() { labelNamespace(t, &v) })
	} else {
		t.Cleanup(func() { labelNamespace(t, nil) })
	}
	labelNamespace(t, ptr("ambient"))
	other := m.Topo.Nodes[0].Pods[1]
	if err := createPod(ctx, "other", "other", other, map[string]string{"app": "other", "istio.io/dataplane-mode": "none"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// No kubelet ends a graceful deletion here: delete at once.
		zero := int64(0)
		if err := kc.CoreV1().Pods(appNS).Delete(ctx, "other", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Error(err)
		}
		waitCaptured(t, other, false)
	})
	for _, p := range []*netns.Pod{client, server} {
		waitCaptured(t, p, true)
	}
	return other
}

// impostor adds, on node1, pod "client" of namespace "elsewhere" (enrolled) running as
// service account "client": the allowed client's account name, another principal.
func impostor(t *testing.T) *netns.Pod {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}
	if _, err := kc.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	impostors++
	p, err := m.Topo.Nodes[0].AddPod(fmt.Sprintf("impostor%d", impostors))
	if err != nil {
		t.Fatal(err)
	}
	if err := createPodIn(ctx, "elsewhere", "client", "client", p, map[string]string{"app": "client"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		if err := kc.CoreV1().Pods("elsewhere").Delete(ctx, "client", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Error(err)
		}
		waitCaptured(t, p, false)
	})
	waitCaptured(t, p, true)
	return p
}

var impostors int

// Policies from the API server (the CRDs shipped in istio.io/api, installed by the chart):
// STRICT refuses plaintext, deny-all plus an ALLOW for one principal admits only that
// client, and an object ztunnel cannot use fails closed and shows in modelProblems.
func TestKubePolicies(t *testing.T) {
	requireMesh(t)
	ic := istio(t)
	ctx := context.Background()
	other := enrolledWithPlainPod(t)
	echo(t, client, podAddr(server))
	echo(t, other, podAddr(server)) // PERMISSIVE
	elsewhere := impostor(t)
	echo(t, elsewhere, podAddr(server))

	var err error
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: appNS}}
	pa.Spec.Mtls = &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT}
	if _, err := ic.SecurityV1().PeerAuthentications(appNS).Create(ctx, pa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPolicies(t, appNS+"/strict")
	refused(t, other, "plaintext under STRICT", "plaintext under STRICT")
	echo(t, client, podAddr(server))
	if err := ic.SecurityV1().PeerAuthentications(appNS).Delete(ctx, "strict", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPolicies(t)
	echo(t, other, podAddr(server))

	echoSel := &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "echo"}}
	createAP(t, ic, "deny-all", func(s *securityv1beta1.AuthorizationPolicy) { s.Selector = echoSel })
	createAP(t, ic, "allow-client", func(s *securityv1beta1.AuthorizationPolicy) {
		s.Selector = echoSel
		s.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
			Principals: []string{mesh.TrustDomain + "/ns/" + appNS + "/sa/client"}}}}}}
	})
	waitPolicies(t, appNS+"/deny-all", appNS+"/allow-client")
	echo(t, client, podAddr(server))
	// Enrolled, with its own principal: refused at node2 (401 to node1).
	labelPod(t, "other", nil)
	waitCaptured(t, other, true)
	refused(t, other, "other principal", "another principal")
	refused(t, elsewhere, "client of elsewhere", "the client's account name in another namespace")
	if err := m.WaitLog("node2", "src.addr="+elsewhere.IP.String()+":", "elsewhere/sa/client", "no ALLOW policy matched"); err != nil {
		t.Error(err)
	}

	createAP(t, ic, "bad-deny", func(s *securityv1beta1.AuthorizationPolicy) {
		s.Selector, s.Action = echoSel, securityv1beta1.AuthorizationPolicy_DENY
		s.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
			IpBlocks: []string{"not-a-cidr"}}}}}}
	})
	waitPolicies(t, appNS+"/deny-all", appNS+"/allow-client", appNS+"/bad-deny")
	refused(t, client, "under an invalid DENY", "under an invalid DENY")
	d, err := m.Dump(ctx, m.Topo.Nodes[1])
	if err != nil {
		t.Fatal(err)
	}
	probs, _ := json.Marshal(d.Problems)
	if !strings.Contains(string(probs), `"name":"bad-deny"`) || !strings.Contains(string(probs), "not-a-cidr") {
		t.Errorf("modelProblems %s: want bad-deny's invalid ipBlocks", probs)
	}
}

// The same manifests as in local mode, applied through the API server: a DENY beats an
// ALLOW, dry-run and AUDIT policies change nothing but are logged, a port-level
// PERMISSIVE overrides a namespace STRICT, and a policy change closes a live connection
// it no longer allows.
func TestKubePolicyManifests(t *testing.T) {
	requireMesh(t)
	other := enrolledWithPlainPod(t)
	doc := func(kind, name, spec string) string {
		return "apiVersion: security.istio.io/v1\nkind: " + kind + "\nmetadata:\n  name: " + name + "\n  namespace: " + appNS + "\n" + spec + "\n---\n"
	}
	clientPrincipal := mesh.TrustDomain + "/ns/" + appNS + "/sa/client"
	t.Run("deny beats allow", func(t *testing.T) {
		m.ApplyPolicies(t, "deny.yaml", doc("AuthorizationPolicy", "allow-client", `spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {principals: ["`+clientPrincipal+`"]}}]}]`)+
			doc("AuthorizationPolicy", "deny-client-ip", `spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["`+client.IP.String()+`/32"]}}], to: [{operation: {ports: ["8080"]}}]}]`),
			appNS+"/allow-client", appNS+"/deny-client-ip")
		refused(t, client, "denied", "DENY over ALLOW")
	})
	t.Run("dry run and audit", func(t *testing.T) {
		m.ApplyPolicies(t, "shadow.yaml", doc("AuthorizationPolicy", "shadow", `  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: echo}}`)+doc("AuthorizationPolicy", "audit", `spec:
  selector: {matchLabels: {app: echo}}
  action: AUDIT
  rules: [{}]`), appNS+"/shadow", appNS+"/audit")
		echo(t, client, podAddr(server))
		if err := m.WaitLog("node2", `dry_run="deny: no ALLOW policy matched (applying: `+appNS+`/shadow)"`); err != nil {
			t.Fatal(err)
		}
		if err := m.WaitLog("node2", "audit="+appNS+"/audit"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("port-level override", func(t *testing.T) {
		m.ApplyPolicies(t, "strict.yaml", doc("PeerAuthentication", "strict", "spec: {mtls: {mode: STRICT}}"), appNS+"/strict")
		refused(t, other, "plaintext", "plaintext under STRICT")
		m.ApplyPolicies(t, "port.yaml", doc("PeerAuthentication", "echo-port", `spec:
  selector: {matchLabels: {app: echo}}
  portLevelMtls:
    8080: {mode: PERMISSIVE}`), appNS+"/echo-port")
		echo(t, other, podAddr(server))
	})
	t.Run("live transfers", func(t *testing.T) {
		// other, enrolled, streams; the DENY for its principal lands while client's long
		// transfer runs: other's connection is closed, client's completes intact.
		labelPod(t, "other", nil)
		waitCaptured(t, other, true)
		c, err := other.Dial(context.Background(), "tcp", podAddr(server).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := mesh.EchoOn(c, "before"); err != nil {
			t.Fatal(err)
		}
		ended := mesh.Stream(c)
		applied := make(chan error, 1)
		go func() {
			time.Sleep(300 * time.Millisecond)
			applied <- m.WritePolicies("deny-other.yaml", doc("AuthorizationPolicy", "deny-other", `spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["`+mesh.TrustDomain+"/ns/"+appNS+`/sa/other"]}}]}]`), appNS+"/deny-other")
		}()
		t.Cleanup(func() {
			if err := m.RemovePolicies("deny-other.yaml"); err != nil {
				t.Error(err)
			}
		})
		if err := mesh.Transfer(context.Background(), client, podAddr(server), 1<<30); err != nil {
			t.Fatalf("allowed transfer across the policy change: %v", err)
		}
		if err := <-applied; err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-ended:
			if os.IsTimeout(err) {
				t.Errorf("denied transfer stalled instead of being closed: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("denied transfer still running after the policy change")
		}
		if err := m.WaitLog("node2", "connection closed by policy", "src.addr="+other.IP.String()+":"); err != nil {
			t.Error(err)
		}
	})
}
