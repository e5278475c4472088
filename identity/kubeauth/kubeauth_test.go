package kubeauth

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambitmesh/ambit/identity"
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

// Review answers of the tests: ztunnel's pod-bound token, a waypoint pod's own token, and
// variations of them.
func reviewAnswers() map[string]authnv1.TokenReviewStatus {
	ztunnel := authnv1.TokenReviewStatus{
		Authenticated: true, Audiences: []string{"ambit-ca"},
		User: authnv1.UserInfo{Username: "system:serviceaccount:ambit:ambit-ztunnel",
			Extra: map[string]authnv1.ExtraValue{NodeNameExtra: {"node1"}, PodNameExtra: {"ztunnel-x"}, PodUIDExtra: {"uid-z"}}},
	}
	waypoint := authnv1.TokenReviewStatus{
		Authenticated: true, Audiences: []string{"ambit-ca"},
		User: authnv1.UserInfo{Username: "system:serviceaccount:apps:waypoint",
			Extra: map[string]authnv1.ExtraValue{NodeNameExtra: {"node3"}, PodNameExtra: {"waypoint-0"}, PodUIDExtra: {"uid-1"}}},
	}
	wrongAud := ztunnel
	wrongAud.Audiences = []string{"https://kubernetes.default.svc"}
	wpWrongAud := waypoint
	wpWrongAud.Audiences = []string{"https://kubernetes.default.svc"}
	unbound := ztunnel
	unbound.User.Extra = nil
	wpUnbound := waypoint
	wpUnbound.User.Extra = map[string]authnv1.ExtraValue{NodeNameExtra: {"node3"}} // no pod-name, pod-uid
	notSA := waypoint
	notSA.User.Username = "alice"
	return map[string]authnv1.TokenReviewStatus{
		"ztunnel": ztunnel, "wrong-aud": wrongAud, "unbound": unbound,
		"waypoint": waypoint, "wp-wrong-aud": wpWrongAud, "wp-unbound": wpUnbound, "not-sa": notSA,
		"bad": {Authenticated: false, Error: "token expired"},
	}
}

func TestAuthenticate(t *testing.T) {
	tests := []struct {
		name, header    string
		caller          ca.Caller
		errPart         string
		unauthenticated bool
	}{
		{"bound ztunnel token", "Bearer ztunnel", ca.Caller{Node: "node1"}, "", false},
		{"waypoint pod's own token", "Bearer waypoint",
			ca.Caller{Workload: &ca.PodRef{Namespace: "apps", Name: "waypoint-0", UID: "uid-1", ServiceAccount: "waypoint"}}, "", false},
		{"no header", "", ca.Caller{}, "no bearer token", true},
		{"not bearer", "Basic Zm9v", ca.Caller{}, "no bearer token", true},
		{"rejected token", "Bearer bad", ca.Caller{}, "token expired", true},
		{"wrong audience", "Bearer wrong-aud", ca.Caller{}, "audience", true},
		{"pod token of the wrong audience", "Bearer wp-wrong-aud", ca.Caller{}, "audience", true},
		{"ztunnel token not bound to a pod", "Bearer unbound", ca.Caller{}, "not bound to a pod on a node", true},
		{"pod token not bound to a pod", "Bearer wp-unbound", ca.Caller{}, "not bound to a pod", true},
		{"not a service account", "Bearer not-sa", ca.Caller{}, "alice is not a service account", true},
		{"api server down", "Bearer apiserver-down", ca.Caller{}, "token review", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls int
			a, err := New(Config{Client: fakeReviews(t, reviewAnswers(), &calls), Audience: "ambit-ca", ServiceAccounts: []string{"ambit/ambit-ztunnel"}})
			if err != nil {
				t.Fatal(err)
			}
			r, _ := http.NewRequest(http.MethodPost, "https://ambit-ca/v1/certificates", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			caller, err := a.Authenticate(r)
			if tt.errPart == "" {
				if err != nil || !reflect.DeepEqual(caller, tt.caller) {
					t.Fatalf("got %v, %v; want %v", caller, err, tt.caller)
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

// pods is a test ca.PodLister.
type pods []ca.Pod

func (ps pods) PodsOnNode(node string) ([]ca.Pod, error) { return ps, nil }

func (ps pods) Pod(ns, name string) (ca.Pod, bool, error) {
	for _, p := range ps {
		if p.Namespace == ns && p.Name == name {
			return p, true, nil
		}
	}
	return ca.Pod{}, false, nil
}

// Authentication and the CA's authorization together: what each token may obtain.
func TestTokenMayHold(t *testing.T) {
	wp := ca.Pod{Namespace: "apps", Name: "waypoint-0", UID: "uid-1", ServiceAccount: "waypoint", Gateway: "waypoint"}
	client := ca.Pod{Namespace: "apps", Name: "client", ServiceAccount: "client"}
	recreated, finished := wp, wp
	recreated.UID = "uid-2"
	finished.Finished = true
	id := func(ns, sa string) spiffeid.ID {
		return spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	}
	tests := []struct {
		name  string
		token string
		pods  pods
		id    spiffeid.ID
		want  string // "" allowed, else part of the refusal
	}{
		{"ztunnel token for a pod on its node", "ztunnel", pods{client}, id("apps", "client"), ""},
		{"waypoint token for its own identity", "waypoint", pods{wp, client}, id("apps", "waypoint"), ""},
		{"waypoint token for another identity", "waypoint", pods{wp, client}, id("apps", "client"), "only its own identity spiffe://cluster.local/ns/apps/sa/waypoint"},
		{"waypoint pod gone", "waypoint", pods{client}, id("apps", "waypoint"), "does not exist"},
		{"waypoint pod finished", "waypoint", pods{finished}, id("apps", "waypoint"), "has finished"},
		{"waypoint pod recreated (UID mismatch)", "waypoint", pods{recreated}, id("apps", "waypoint"), "bound to UID uid-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls int
			a, err := New(Config{Client: fakeReviews(t, reviewAnswers(), &calls), Audience: "ambit-ca", ServiceAccounts: []string{"ambit/ambit-ztunnel"}})
			if err != nil {
				t.Fatal(err)
			}
			r, _ := http.NewRequest(http.MethodPost, "/", nil)
			r.Header.Set("Authorization", "Bearer "+tt.token)
			caller, err := a.Authenticate(r)
			if err != nil {
				t.Fatal(err)
			}
			err = ca.PodAuthorizer{Pods: tt.pods}.Authorize(t.Context(), caller, tt.id)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%v, want ErrNotAuthorized containing %q", err, tt.want)
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
