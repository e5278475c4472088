package ca_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// lockedBuffer collects log output written from server goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// placement is a test Authorizer: node -> identities of its workloads.
func placement(m map[string][]spiffeid.ID) ca.AuthorizerFunc {
	return func(_ context.Context, c ca.Caller, id spiffeid.ID) error {
		for _, have := range m[c.Node] {
			if have == id {
				return nil
			}
		}
		return fmt.Errorf("no workload %s on node %q", id, c.Node)
	}
}

func writeFile(tb testing.TB, path, content string, mode os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		tb.Fatal(err)
	}
}

type testServer struct {
	ca   *ca.CA
	sock string
	logs *lockedBuffer
	dir  string
}

// startServer runs a CA server on a unix socket: node-a holds idA, node-b holds idB.
func startServer(tb testing.TB) *testServer {
	tb.Helper()
	return startServerWith(tb, "# node token\nnode-a tokA\n\nnode-b tokB\n",
		placement(map[string][]spiffeid.ID{"node-a": {idA}, "node-b": {idB}}))
}

// startServerWith runs a CA server on a unix socket with the given token file content
// and authorizer.
func startServerWith(tb testing.TB, tokenLines string, authz ca.Authorizer) *testServer {
	tb.Helper()
	dir := tb.TempDir()
	ts := &testServer{ca: newCA(tb, ca.Config{}), sock: filepath.Join(dir, "ca.sock"), logs: &lockedBuffer{}, dir: dir}
	tokens := filepath.Join(dir, "tokens")
	writeFile(tb, tokens, tokenLines, 0o600)
	auth, err := ca.LoadTokenFile(tokens)
	if err != nil {
		tb.Fatal(err)
	}
	return startServerAuth(tb, ts, auth, authz)
}

// startServerAuth runs ts's CA server with the given authenticator and authorizer.
func startServerAuth(tb testing.TB, ts *testServer, auth ca.Authenticator, authz ca.Authorizer) *testServer {
	tb.Helper()
	srv, err := ca.NewServer(ca.ServerConfig{
		CA:            ts.ca,
		Authenticator: auth,
		Authorizer:    authz,
		Logger:        slog.New(slog.NewJSONHandler(ts.logs, nil)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("unix", ts.sock)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	tb.Cleanup(func() {
		if err := srv.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
		srv.Close() // idempotent
	})
	return ts
}

func (ts *testServer) client(tb testing.TB, token string) *ca.Client {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "token")
	writeFile(tb, path, token+"\n", 0o600)
	c, err := ca.NewClient(ca.ClientConfig{Addr: "unix://" + ts.sock, TokenFile: path, Roots: ts.ca.Roots()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// post sends a raw request and returns the status and body.
func (ts *testServer) post(tb testing.TB, token, method, body string) (int, string) {
	tb.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ts.ca.Roots()[0])
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", ts.sock)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: ca.ServerName},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, "https://ambit-ca/v1/certificates", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 1 || resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		tb.Errorf("served %s over TLS %x, want HTTP/1.1 over TLS 1.3", resp.Proto, resp.TLS.Version)
	}
	return resp.StatusCode, string(b)
}

func TestServerIssues(t *testing.T) {
	ts := startServer(t)
	c := ts.client(t, "tokA")
	chain, roots, err := c.Issue(t.Context(), idA, newCSR(t, p256(t)))
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if len(roots) != 1 || !roots[0].Equal(ts.ca.Roots()[0]) {
		t.Fatalf("roots %v, want the CA root", roots)
	}
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil || id != idA {
		t.Fatalf("issued chain: %v, %v", id, err)
	}
	if !strings.Contains(ts.logs.String(), `"node":"node-a"`) {
		t.Errorf("issue not logged with the node: %s", ts.logs)
	}
}

func TestServerRejectsWrongToken(t *testing.T) {
	ts := startServer(t)
	_, _, err := ts.client(t, "nope").Issue(t.Context(), idA, newCSR(t, p256(t)))
	if err == nil || errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), "token") {
		t.Fatalf("Issue with a wrong token: %v, want a token error", err)
	}
	if code, body := ts.post(t, "nope", http.MethodPost, `{}`); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d %s, want 401", code, body)
	}
	if code, body := ts.post(t, "", http.MethodPost, `{}`); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d %s, want 401", code, body)
	}
	if strings.Contains(ts.logs.String(), "nope") {
		t.Error("a presented token was logged")
	}
}

func TestServerRefusesForeignIdentity(t *testing.T) {
	ts := startServer(t)
	_, _, err := ts.client(t, "tokA").Issue(t.Context(), idB, newCSR(t, p256(t)))
	if !errors.Is(err, identity.ErrNotAuthorized) {
		t.Fatalf("node-a asking for b's identity: %v, want ErrNotAuthorized", err)
	}
	logs := ts.logs.String()
	if !strings.Contains(logs, `"node":"node-a"`) || !strings.Contains(logs, idB.String()) || !strings.Contains(logs, "ca identity refused") {
		t.Fatalf("refusal not logged with node and id: %s", logs)
	}
	// node-b may.
	if _, _, err := ts.client(t, "tokB").Issue(t.Context(), idB, newCSR(t, p256(t))); err != nil {
		t.Fatalf("node-b asking for its own identity: %v", err)
	}
}

func TestServerBadInput(t *testing.T) {
	ts := startServer(t)
	csr, _ := json.Marshal(newCSR(t, p256(t)))
	tests := []struct {
		name, method, body string
		code               int
		want               string
	}{
		{"malformed JSON", http.MethodPost, `{"id": `, http.StatusBadRequest, "decode request body"},
		{"unknown field", http.MethodPost, `{"id":"x","csr":"","extra":1}`, http.StatusBadRequest, "extra"},
		{"bad id", http.MethodPost, `{"id":"http://x","csr":` + string(csr) + `}`, http.StatusBadRequest, "field id"},
		{"missing csr", http.MethodPost, `{"id":"` + idA.String() + `"}`, http.StatusBadRequest, "field csr"},
		{"bad base64", http.MethodPost, `{"id":"` + idA.String() + `","csr":"!!"}`, http.StatusBadRequest, "decode request body"},
		{"bad csr", http.MethodPost, `{"id":"` + idA.String() + `","csr":"AAAA"}`, http.StatusBadRequest, "parse csr"},
		{"trailing data", http.MethodPost, `{"id":"` + idA.String() + `","csr":` + string(csr) + `} {}`, http.StatusBadRequest, "trailing"},
		{"GET", http.MethodGet, ``, http.StatusMethodNotAllowed, "use POST"},
		{"ok", http.MethodPost, `{"id":"` + idA.String() + `","csr":` + string(csr) + `}`, http.StatusOK, `"chain"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.post(t, "tokA", tt.method, tt.body)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("%d %s, want %d containing %q", code, body, tt.code, tt.want)
			}
		})
	}
}

func TestClientTokenRotationAndTrust(t *testing.T) {
	ts := startServer(t)
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, "tokA", 0o600)
	c, err := ca.NewClient(ca.ClientConfig{Addr: "unix://" + ts.sock, TokenFile: path, Roots: ts.ca.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.Issue(t.Context(), idA, newCSR(t, p256(t))); err != nil {
		t.Fatal(err)
	}
	// The token file is re-read: now this client is node-b.
	writeFile(t, path, "tokB", 0o600)
	if _, _, err := c.Issue(t.Context(), idB, newCSR(t, p256(t))); err != nil {
		t.Fatalf("after token rotation: %v", err)
	}

	// A client that does not trust the CA's root refuses it.
	other := newCA(t, ca.Config{})
	bad, err := ca.NewClient(ca.ClientConfig{Addr: "unix://" + ts.sock, TokenFile: path, Roots: other.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, _, err := bad.Issue(t.Context(), idB, newCSR(t, p256(t))); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted CA: %v, want a certificate error", err)
	}
}

func TestNewClientErrors(t *testing.T) {
	roots := newCA(t, ca.Config{}).Roots()
	tests := []struct {
		name string
		cfg  ca.ClientConfig
	}{
		{"no token file", ca.ClientConfig{Addr: "127.0.0.1:1", Roots: roots}},
		{"no roots", ca.ClientConfig{Addr: "127.0.0.1:1", TokenFile: "/x"}},
		{"relative unix path", ca.ClientConfig{Addr: "unix://ca.sock", TokenFile: "/x", Roots: roots}},
		{"no port", ca.ClientConfig{Addr: "ambit-ca", TokenFile: "/x", Roots: roots}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.NewClient(tt.cfg); err == nil {
				t.Fatal("NewClient succeeded")
			}
		})
	}
}

func TestNewServerErrors(t *testing.T) {
	c := newCA(t, ca.Config{})
	allow := ca.AuthorizerFunc(func(context.Context, ca.Caller, spiffeid.ID) error { return nil })
	for _, cfg := range []ca.ServerConfig{
		{Authenticator: &ca.TokenAuthenticator{}, Authorizer: allow},
		{CA: c, Authorizer: allow},
		{CA: c, Authenticator: &ca.TokenAuthenticator{}},
	} {
		if _, err := ca.NewServer(cfg); err == nil {
			t.Fatalf("NewServer(%+v) succeeded", cfg)
		}
	}
}

func TestLoadTokenFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    string // error substring, "" = ok
	}{
		{"ok", "a t1\n# comment\n\nb t2\n", 0o600, ""},
		{"group readable", "a t1\n", 0o640, "group or other"},
		{"world readable", "a t1\n", 0o644, "group or other"},
		{"one field", "a\n", 0o600, ":1: want"},
		{"three fields", "a t1\nb t2 x\n", 0o600, ":2: want"},
		{"duplicate token", "a t1\nb t1\n", 0o600, "already used on line 1"},
		{"empty", "# nothing\n", 0o600, "no tokens"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprint(i))
			writeFile(t, path, tt.content, tt.mode)
			a, err := ca.LoadTokenFile(path)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("LoadTokenFile: %v, want error containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ header, node string }{
				{"Bearer t1", "a"}, {"bearer t2", "b"}, {"Bearer t3", ""}, {"Basic t1", ""}, {"", ""}, {"Bearer ", ""}, {"t1", ""},
			} {
				r, _ := http.NewRequest(http.MethodPost, "/", nil)
				if c.header != "" {
					r.Header.Set("Authorization", c.header)
				}
				caller, err := a.Authenticate(r)
				if c.node == "" {
					if err == nil || !errors.Is(err, ca.ErrUnauthenticated) {
						t.Errorf("Authenticate(%q) = %v, %v; want ErrUnauthenticated", c.header, caller, err)
					}
				} else if err != nil || caller != (ca.Caller{Node: c.node}) {
					t.Errorf("Authenticate(%q) = %v, %v; want node %q", c.header, caller, err, c.node)
				}
			}
		})
	}
	if _, err := ca.LoadTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file loaded")
	}
}

func TestLocalIssuer(t *testing.T) {
	c := newCA(t, ca.Config{})
	li := ca.LocalIssuer{CA: c, Node: "node-a", Authorizer: placement(map[string][]spiffeid.ID{"node-a": {idA}})}
	chain, roots, err := li.Issue(t.Context(), idA, newCSR(t, p256(t)))
	if err != nil || len(chain) != 1 || len(roots) != 1 {
		t.Fatalf("Issue(own identity) = %d certs, %d roots, %v", len(chain), len(roots), err)
	}
	if _, _, err := li.Issue(t.Context(), idB, newCSR(t, p256(t))); !errors.Is(err, identity.ErrNotAuthorized) {
		t.Fatalf("Issue(foreign identity): %v, want ErrNotAuthorized", err)
	}
	var _ identity.Issuer = li
}

func TestServerAuthorizationUnavailable(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	writeFile(t, tokens, "node-a tokA\n", 0o600)
	auth, err := ca.LoadTokenFile(tokens)
	if err != nil {
		t.Fatal(err)
	}
	authority := newCA(t, ca.Config{})
	srv, err := ca.NewServer(ca.ServerConfig{
		CA: authority, Authenticator: auth,
		Authorizer: ca.AuthorizerFunc(func(context.Context, ca.Caller, spiffeid.ID) error {
			return fmt.Errorf("model not loaded: %w", identity.ErrUnavailable)
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "ca.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() { srv.Close(); <-done }()
	ts := &testServer{ca: authority, sock: sock}
	_, _, err = ts.client(t, "tokA").Issue(t.Context(), idA, newCSR(t, p256(t)))
	if err == nil || errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Issue with authorization unavailable: %v, want a 503 error, not ErrNotAuthorized", err)
	}
}

// callers is a test Authenticator: bearer token -> caller.
type callers map[string]ca.Caller

func (c callers) Authenticate(r *http.Request) (ca.Caller, error) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if caller, ok := c[tok]; ok {
		return caller, nil
	}
	return ca.Caller{}, fmt.Errorf("unknown token: %w", ca.ErrUnauthenticated)
}

// A waypoint pod's own token gets its own identity through the server; a request for
// another is refused with the reason, naming the token's account and the requested ID.
func TestServerWorkloadCaller(t *testing.T) {
	dir := t.TempDir()
	ts := &testServer{ca: newCA(t, ca.Config{}), sock: filepath.Join(dir, "ca.sock"), logs: &lockedBuffer{}, dir: dir}
	wp := ca.Pod{Namespace: "apps", Name: "waypoint-0", UID: "uid-1", ServiceAccount: "waypoint", Gateway: "waypoint"}
	startServerAuth(t, ts, callers{
		"wp":   {Workload: &ca.PodRef{Namespace: "apps", Name: "waypoint-0", UID: "uid-1", ServiceAccount: "waypoint"}},
		"node": {Node: "node1"},
	}, ca.PodAuthorizer{Pods: podMap{"node1": {wp}}})
	own := spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/waypoint")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/client")
	chain, _, err := ts.client(t, "wp").Issue(t.Context(), own, newCSR(t, p256(t)))
	if err != nil {
		t.Fatalf("own identity: %v", err)
	}
	if got := chain[0].URIs[0].String(); got != own.String() {
		t.Fatalf("certificate for %s, want %s", got, own)
	}
	_, _, err = ts.client(t, "wp").Issue(t.Context(), other, newCSR(t, p256(t)))
	want := "pod apps/waypoint-0 (service account apps/waypoint) may not hold " + other.String() +
		": a pod's own token gets only its own identity " + own.String()
	if !errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), want) {
		t.Fatalf("another identity: %v, want ErrNotAuthorized with %q", err, want)
	}
	// A node is told no more than that it may not.
	_, _, err = ts.client(t, "node").Issue(t.Context(), other, newCSR(t, p256(t)))
	if !errors.Is(err, identity.ErrNotAuthorized) || !strings.HasSuffix(strings.TrimSuffix(err.Error(), ": "+identity.ErrNotAuthorized.Error()), `node "node1" may not hold `+other.String()) {
		t.Fatalf("node: %v", err)
	}
}
