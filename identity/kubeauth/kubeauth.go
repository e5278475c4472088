// Package kubeauth authenticates callers of the built-in CA with Kubernetes
// service-account tokens: the CA asks the API server (TokenReview) who presented a token
// for its audience, and accepts only tokens bound to a pod. A token of ztunnel's service
// account authenticates the node tunnel of the node its pod runs on (ca.Caller.Node);
// any other service account's token authenticates that pod itself (ca.Caller.Workload),
// which the CA's authorizer allows only its own identity, only while that pod runs, and
// only for waypoint pods.
//
// A stolen ztunnel token therefore names only the node its pod runs on, and a stolen
// waypoint token yields only that waypoint's identity while its pod runs; certificates
// issued with it stay valid until they expire (the leaf TTL), as with any credential.
package kubeauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambitmesh/ambit/identity/ca"
)

// User extras the API server sets on tokens bound to a pod (the node's when the pod is
// scheduled).
const (
	NodeNameExtra = "authentication.kubernetes.io/node-name"
	PodNameExtra  = "authentication.kubernetes.io/pod-name"
	PodUIDExtra   = "authentication.kubernetes.io/pod-uid"
)

const serviceAccountPrefix = "system:serviceaccount:"

// Config configures a TokenReviewer.
type Config struct {
	Client kubernetes.Interface
	// Audience the tokens must be issued for (projected token audience), e.g. "ambit-ca".
	Audience string
	// ServiceAccounts whose tokens authenticate node tunnels (ztunnel), as
	// "namespace/name". Pod-bound tokens of other service accounts authenticate their pod.
	ServiceAccounts []string
	// CacheTTL bounds how long a successful review is reused (default 1m).
	CacheTTL time.Duration
	Now      func() time.Time
}

// TokenReviewer implements ca.Authenticator with the TokenReview API.
type TokenReviewer struct {
	cfg     Config
	allowed []string // usernames
	mu      sync.Mutex
	cache   map[[sha256.Size]byte]cached
}

type cached struct {
	caller  ca.Caller
	expires time.Time
}

var _ ca.Authenticator = (*TokenReviewer)(nil)

// New validates cfg.
func New(cfg Config) (*TokenReviewer, error) {
	if cfg.Client == nil {
		return nil, errors.New("kubeauth: a Kubernetes client is required")
	}
	if cfg.Audience == "" {
		return nil, errors.New("kubeauth: an audience is required")
	}
	if len(cfg.ServiceAccounts) == 0 {
		return nil, errors.New("kubeauth: at least one node tunnel service account is required")
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &TokenReviewer{cfg: cfg, cache: map[[sha256.Size]byte]cached{}}
	for _, sa := range cfg.ServiceAccounts {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok || ns == "" || name == "" {
			return nil, fmt.Errorf("kubeauth: service account %q: want namespace/name", sa)
		}
		t.allowed = append(t.allowed, serviceAccountPrefix+ns+":"+name)
	}
	return t, nil
}

// Authenticate returns who presented the bearer token: the node whose ztunnel it
// belongs to, or the pod it is bound to.
func (t *TokenReviewer) Authenticate(r *http.Request) (ca.Caller, error) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return ca.Caller{}, fmt.Errorf("%w: no bearer token", ca.ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(token))
	now := t.cfg.Now()
	t.mu.Lock()
	if c, ok := t.cache[key]; ok && now.Before(c.expires) {
		t.mu.Unlock()
		return c.caller, nil
	}
	t.mu.Unlock()

	caller, err := t.review(r.Context(), token)
	if err != nil {
		return ca.Caller{}, err
	}
	t.mu.Lock()
	for k, c := range t.cache { // keep the cache bounded by dropping expired entries
		if !now.Before(c.expires) {
			delete(t.cache, k)
		}
	}
	t.cache[key] = cached{caller: caller, expires: now.Add(t.cfg.CacheTTL)}
	t.mu.Unlock()
	return caller, nil
}

func (t *TokenReviewer) review(ctx context.Context, token string) (ca.Caller, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := t.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{t.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		// The API server could not answer: not the caller's fault, not a refusal.
		return ca.Caller{}, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token not authenticated"
		}
		return ca.Caller{}, fmt.Errorf("%w: %s", ca.ErrUnauthenticated, reason)
	}
	if !slices.Contains(st.Audiences, t.cfg.Audience) {
		return ca.Caller{}, fmt.Errorf("%w: token not issued for audience %q", ca.ErrUnauthenticated, t.cfg.Audience)
	}
	user := st.User.Username
	if slices.Contains(t.allowed, user) {
		node, ok := extra(st.User, NodeNameExtra)
		if !ok {
			return ca.Caller{}, fmt.Errorf("%w: token of %s is not bound to a pod on a node", ca.ErrUnauthenticated, user)
		}
		return ca.Caller{Node: node}, nil
	}
	rest, isSA := strings.CutPrefix(user, serviceAccountPrefix)
	ns, sa, ok := strings.Cut(rest, ":")
	if !isSA || !ok || ns == "" || sa == "" {
		return ca.Caller{}, fmt.Errorf("%w: %s is not a service account", ca.ErrUnauthenticated, user)
	}
	pod, okName := extra(st.User, PodNameExtra)
	uid, okUID := extra(st.User, PodUIDExtra)
	if !okName || !okUID {
		return ca.Caller{}, fmt.Errorf("%w: token of %s is not bound to a pod", ca.ErrUnauthenticated, user)
	}
	return ca.Caller{Workload: &ca.PodRef{Namespace: ns, Name: pod, UID: uid, ServiceAccount: sa}}, nil
}

// extra returns the user's single, non-empty extra value for key.
func extra(u authnv1.UserInfo, key string) (string, bool) {
	v := u.Extra[key]
	if len(v) != 1 || v[0] == "" {
		return "", false
	}
	return v[0], true
}
