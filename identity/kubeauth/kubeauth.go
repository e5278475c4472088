// Package kubeauth authenticates node tunnels to the built-in CA with Kubernetes
// service-account tokens: the CA asks the API server (TokenReview) who presented a
// token, accepts only ztunnel's service account, and learns the node from the token's
// pod binding. A stolen token therefore names only the node its pod runs on.
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

// NodeNameExtra is the user extra the API server sets on tokens bound to a pod.
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// Config configures a TokenReviewer.
type Config struct {
	Client kubernetes.Interface
	// Audience the tokens must be issued for (projected token audience), e.g. "ambit-ca".
	Audience string
	// ServiceAccounts allowed to authenticate, as "namespace/name".
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
	node    string
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
		return nil, errors.New("kubeauth: at least one service account must be allowed")
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
		t.allowed = append(t.allowed, "system:serviceaccount:"+ns+":"+name)
	}
	return t, nil
}

// Authenticate returns the node whose ztunnel presented the bearer token.
func (t *TokenReviewer) Authenticate(r *http.Request) (string, error) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", fmt.Errorf("%w: no bearer token", ca.ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(token))
	now := t.cfg.Now()
	t.mu.Lock()
	if c, ok := t.cache[key]; ok && now.Before(c.expires) {
		t.mu.Unlock()
		return c.node, nil
	}
	t.mu.Unlock()

	node, err := t.review(r.Context(), token)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	for k, c := range t.cache { // keep the cache bounded by dropping expired entries
		if !now.Before(c.expires) {
			delete(t.cache, k)
		}
	}
	t.cache[key] = cached{node: node, expires: now.Add(t.cfg.CacheTTL)}
	t.mu.Unlock()
	return node, nil
}

func (t *TokenReviewer) review(ctx context.Context, token string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := t.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{t.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		// The API server could not answer: not the caller's fault, not a refusal.
		return "", fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token not authenticated"
		}
		return "", fmt.Errorf("%w: %s", ca.ErrUnauthenticated, reason)
	}
	if !slices.Contains(st.Audiences, t.cfg.Audience) {
		return "", fmt.Errorf("%w: token not issued for audience %q", ca.ErrUnauthenticated, t.cfg.Audience)
	}
	if !slices.Contains(t.allowed, st.User.Username) {
		return "", fmt.Errorf("%w: %s is not a node tunnel service account", ca.ErrUnauthenticated, st.User.Username)
	}
	nodes := st.User.Extra[NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		return "", fmt.Errorf("%w: token of %s is not bound to a pod on a node", ca.ErrUnauthenticated, st.User.Username)
	}
	return nodes[0], nil
}
