package ca

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Caller is who presented a request's credentials, as an Authenticator found: either a
// node tunnel (Node), which may hold the identities of the pods on its node, or one pod
// that authenticated as itself (Workload), which may hold only its own identity.
type Caller struct {
	Node     string
	Workload *PodRef
}

// PodRef is the pod a workload credential is bound to.
type PodRef struct {
	Namespace, Name string
	UID             string // the pod's UID the credential is bound to
	ServiceAccount  string // the credential's service account
}

// String names the caller for logs and refusals.
func (c Caller) String() string {
	if w := c.Workload; w != nil {
		return fmt.Sprintf("pod %s/%s (service account %s/%s)", w.Namespace, w.Name, w.Namespace, w.ServiceAccount)
	}
	return fmt.Sprintf("node %q", c.Node)
}

// Authenticator tells who sent a request.
type Authenticator interface {
	Authenticate(r *http.Request) (Caller, error)
}

// Authorizer decides whether caller may hold id. Errors wrapping identity.ErrUnavailable
// mean it could not decide (the server answers 503); any other error refuses (403).
type Authorizer interface {
	Authorize(ctx context.Context, caller Caller, id spiffeid.ID) error
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, caller Caller, id spiffeid.ID) error

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, caller Caller, id spiffeid.ID) error {
	return f(ctx, caller, id)
}

// ErrUnauthenticated is returned by authenticators for missing or wrong credentials.
var ErrUnauthenticated = errors.New("unauthenticated")

// TokenAuthenticator authenticates "Authorization: Bearer <token>" against a
// fixed set of per-node tokens.
type TokenAuthenticator struct {
	nodes  []string
	hashes [][sha256.Size]byte // compared in constant time, all of them every time
}

// LoadTokenFile reads lines "<node> <token>" (blank lines and # comments
// ignored). The file must not be accessible by group or other; tokens must be unique.
func LoadTokenFile(path string) (*TokenAuthenticator, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load tokens: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load tokens: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load tokens: %s has mode %04o: must not be accessible by group or other (chmod 600)", path, fi.Mode().Perm())
	}
	a := &TokenAuthenticator{}
	seen := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("load tokens: %s:%d: want \"<node> <token>\", got %d fields", path, line, len(fields))
		}
		h := sha256.Sum256([]byte(fields[1]))
		if prev, dup := seen[h]; dup {
			return nil, fmt.Errorf("load tokens: %s:%d: token already used on line %d", path, line, prev)
		}
		seen[h] = line
		a.nodes = append(a.nodes, fields[0])
		a.hashes = append(a.hashes, h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load tokens: %s: %w", path, err)
	}
	if len(a.nodes) == 0 {
		return nil, fmt.Errorf("load tokens: %s: no tokens", path)
	}
	return a, nil
}

// Authenticate implements Authenticator: a known token is its node's. Errors wrap
// ErrUnauthenticated.
func (a *TokenAuthenticator) Authenticate(r *http.Request) (Caller, error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if h == "" {
		return Caller{}, fmt.Errorf("no authorization header: %w", ErrUnauthenticated)
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return Caller{}, fmt.Errorf("authorization header is not \"Bearer <token>\": %w", ErrUnauthenticated)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	match := -1
	for i := range a.hashes {
		if subtle.ConstantTimeCompare(sum[:], a.hashes[i][:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return Caller{}, fmt.Errorf("unknown token: %w", ErrUnauthenticated)
	}
	return Caller{Node: a.nodes[match]}, nil
}
