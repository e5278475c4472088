package kubeauth

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambitmesh/ambit/identity/ca"
)

// fakeReviews answers TokenReviews from a table keyed by token.
func fakeReviews(t *testing.T, answers map[string]authnv1.TokenReviewStatus, calls *int) *fake.Clientset {
	t.Helper()
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		*calls++
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if tr.Spec.Token == "apiserver-down" {
			return true, nil, errors.New("connection refused")
		}
		out := tr.DeepCopy()
		out.Status = answers[tr.Spec.Token]
		return true, out, nil
	})
	return c
}

func TestAuthenticate(t *testing.T) {
	good := authnv1.TokenReviewStatus{
		Authenticated: true, Audiences: []string{"ambit-ca"},
		User: authnv1.UserInfo{Username: "system:serviceaccount:ambit:ambit-ztunnel",
			Extra: map[string]authnv1.ExtraValue{NodeNameExtra: {"node1"}}},
	}
	otherSA := good
	otherSA.User.Username = "system:serviceaccount:default:app"
	wrongAud := good
	wrongAud.Audiences = []string{"https://kubernetes.default.svc"}
	unbound := good
	unbound.User.Extra = nil
	answers := map[string]authnv1.TokenReviewStatus{
		"good": good, "other-sa": otherSA, "wrong-aud": wrongAud, "unbound": unbound,
		"bad": {Authenticated: false, Error: "token expired"},
	}
	tests := []struct {
		name, header, node, errPart string
		unauthenticated             bool
	}{
		{"bound ztunnel token", "Bearer good", "node1", "", false},
		{"no header", "", "", "no bearer token", true},
		{"not bearer", "Basic Zm9v", "", "no bearer token", true},
		{"rejected token", "Bearer bad", "", "token expired", true},
		{"other service account", "Bearer other-sa", "", "not a node tunnel", true},
		{"wrong audience", "Bearer wrong-aud", "", "audience", true},
		{"not bound to a pod", "Bearer unbound", "", "not bound to a pod", true},
		{"api server down", "Bearer apiserver-down", "", "token review", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls int
			a, err := New(Config{Client: fakeReviews(t, answers, &calls), Audience: "ambit-ca", ServiceAccounts: []string{"ambit/ambit-ztunnel"}})
			if err != nil {
				t.Fatal(err)
			}
			r, _ := http.NewRequest(http.MethodPost, "https://ambit-ca/v1/certificates", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			node, err := a.Authenticate(r)
			if tt.errPart == "" {
				if err != nil || node != tt.node {
					t.Fatalf("got %q, %v; want %q", node, err, tt.node)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errPart) {
				t.Fatalf("err %v, want one containing %q", err, tt.errPart)
			}
			if errors.Is(err, ca.ErrUnauthenticated) != tt.unauthenticated {
				t.Fatalf("errors.Is(ErrUnauthenticated) = %v, want %v (%v)", !tt.unauthenticated, tt.unauthenticated, err)
			}
		})
	}
}

func TestAuthenticateCaches(t *testing.T) {
	now := time.Unix(1000, 0)
	var calls int
	answers := map[string]authnv1.TokenReviewStatus{"good": {
		Authenticated: true, Audiences: []string{"ambit-ca"},
		User: authnv1.UserInfo{Username: "system:serviceaccount:ambit:ambit-ztunnel",
			Extra: map[string]authnv1.ExtraValue{NodeNameExtra: {"node1"}}},
	}}
	a, err := New(Config{Client: fakeReviews(t, answers, &calls), Audience: "ambit-ca",
		ServiceAccounts: []string{"ambit/ambit-ztunnel"}, CacheTTL: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := http.NewRequest(http.MethodPost, "/", nil)
	r.Header.Set("Authorization", "Bearer good")
	for i := 0; i < 3; i++ {
		if _, err := a.Authenticate(r); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 1 {
		t.Fatalf("%d token reviews for 3 requests within the cache TTL, want 1", calls)
	}
	now = now.Add(2 * time.Minute)
	if _, err := a.Authenticate(r); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("%d token reviews after the TTL, want 2", calls)
	}
}

func TestNewErrors(t *testing.T) {
	c := fake.NewClientset()
	for _, cfg := range []Config{
		{Audience: "a", ServiceAccounts: []string{"a/b"}},
		{Client: c, ServiceAccounts: []string{"a/b"}},
		{Client: c, Audience: "a"},
		{Client: c, Audience: "a", ServiceAccounts: []string{"nonamespace"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
