package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	kubetest "github.com/ambitmesh/ambit/tests/kube"
)

// The CA in Kubernetes mode against a real API server, with real projected tokens from
// the TokenRequest API: a waypoint pod's own token gets its own certificate and nothing
// else, tokens of other pods, of finished pods and of the wrong audience get nothing, and
// once the pod is deleted its token gets nothing either (even while the review is cached).
func TestKubeWorkloadTokens(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (private network namespace)")
	}
	if binariesErr != nil {
		t.Fatalf("kube test binaries: %v", binariesErr)
	}
	ctx := context.Background()
	cluster := kubetest.StartForTest(t, ctx, kubetest.Options{})
	admin := cluster.Client()
	dir := t.TempDir()

	// The CA runs as its own service account with the chart's cluster permissions.
	caToken, err := cluster.ServiceAccountToken(ctx, "ambit-system", "ambit-ca", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-ca"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-ca"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "ambit-ca"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "ambit-system", Name: "ambit-ca"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "ca.kubeconfig")
	if err := cluster.WriteKubeconfig(kubeconfig, caToken); err != nil {
		t.Fatal(err)
	}

	// Pods: two of waypoint apps/waypoint (one of them finished) and an application pod.
	for _, sa := range []string{"waypoint", "app"} {
		if _, err := cluster.ServiceAccountToken(ctx, "apps", sa, "", 0); err != nil { // creates apps and sa
			t.Fatal(err)
		}
	}
	wpLabels := map[string]string{discovery.LabelGatewayName: "waypoint"}
	createPod(t, admin, "waypoint-0", "waypoint", wpLabels)
	done := createPod(t, admin, "waypoint-1", "waypoint", wpLabels)
	createPod(t, admin, "app-0", "app", nil)
	wp0 := podToken(t, admin, "waypoint-0", "waypoint", "ambit-ca")
	wp1 := podToken(t, admin, "waypoint-1", "waypoint", "ambit-ca")
	app0 := podToken(t, admin, "app-0", "app", "ambit-ca")
	wrongAud := podToken(t, admin, "waypoint-0", "waypoint", "not-ambit-ca")
	done.Status.Phase = corev1.PodSucceeded
	if _, err := admin.CoreV1().Pods("apps").UpdateStatus(ctx, done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	cfg := Config{
		StateDir: filepath.Join(dir, "state"), Listen: "unix://" + filepath.Join(dir, "ca.sock"),
		Kubeconfig: kubeconfig, ZtunnelServiceAccounts: []string{"ambit-system/ambit-ztunnel"},
	}
	runDone := make(chan error, 1)
	go func() { runDone <- Run(runCtx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	roots := waitCA(t, cfg, filepath.Join(dir, "ca.sock"))

	own := spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/waypoint")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/app")
	issue := func(token string, id spiffeid.ID) ([]string, error) {
		t.Helper()
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := ca.NewClient(ca.ClientConfig{Addr: cfg.Listen, TokenFile: tokenFile, Roots: roots})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		chain, _, err := c.Issue(ctx, id, testCSR(t, id))
		if err != nil {
			return nil, err
		}
		var uris []string
		for _, u := range chain[0].URIs {
			uris = append(uris, u.String())
		}
		return uris, nil
	}
	// The informer syncs after the CA starts listening: 503 until then.
	for i := 0; ; i++ {
		uris, err := issue(wp0, own)
		if err == nil {
			if len(uris) != 1 || uris[0] != own.String() {
				t.Fatalf("waypoint-0's certificate names %v, want %s", uris, own)
			}
			break
		}
		if i == 500 || !strings.Contains(err.Error(), "503") {
			t.Fatalf("waypoint-0 for its own identity: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	refused := []struct {
		name, token string
		id          spiffeid.ID
		want        string
	}{
		{"another identity", wp0, other, "pod apps/waypoint-0 (service account apps/waypoint) may not hold " + other.String() + ": a pod's own token gets only its own identity " + own.String()},
		{"a finished pod", wp1, own, "pod apps/waypoint-1 has finished"},
		{"not a waypoint pod", app0, other, "pod apps/app-0 is not a waypoint pod"},
	}
	for _, tt := range refused {
		if _, err := issue(tt.token, tt.id); !errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want ErrNotAuthorized containing %q", tt.name, err, tt.want)
		}
	}
	if _, err := issue(wrongAud, own); err == nil || !strings.Contains(err.Error(), "ca rejected the token") {
		t.Errorf("token for another audience: %v, want rejected (401)", err)
	}

	// The pod goes: its token, reviewed a moment ago (and cached), gets nothing.
	zero := int64(0)
	if err := admin.CoreV1().Pods("apps").Delete(ctx, "waypoint-0", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		_, err := issue(wp0, own)
		if errors.Is(err, identity.ErrNotAuthorized) && strings.Contains(err.Error(), "pod apps/waypoint-0 does not exist") {
			break
		}
		if i == 500 {
			t.Fatalf("after the pod was deleted: %v, want refused, pod does not exist", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func createPod(t *testing.T, c kubernetes.Interface, name, sa string, labels map[string]string) *corev1.Pod {
	t.Helper()
	p, err := c.CoreV1().Pods("apps").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "c", Image: "example/c"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// podToken is a projected token of service account apps/sa for audience, bound to pod.
func podToken(t *testing.T, c kubernetes.Interface, pod, sa, audience string) string {
	t.Helper()
	ctx := context.Background()
	p, err := c.CoreV1().Pods("apps").Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := c.CoreV1().ServiceAccounts("apps").CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{audience},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// testCSR is a P-256 CSR for id, as the certificate manager makes it.
func testCSR(t *testing.T, id spiffeid.ID) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// waitCA waits until the CA has written its root and listens on sock; it returns the roots.
func waitCA(t *testing.T, cfg Config, sock string) []*x509.Certificate {
	t.Helper()
	for i := 0; ; i++ {
		roots, err := ca.LoadRoots(filepath.Join(cfg.StateDir, ca.RootFile))
		if _, serr := os.Stat(sock); err == nil && serr == nil {
			return roots
		}
		if i == 1000 {
			t.Fatal("ambit-ca did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
