package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

const (
	// ServerName is the DNS name in the CA server's serving certificate.
	ServerName = "ambit-ca"
	// CertificatesPath is the issuing endpoint.
	CertificatesPath = "/v1/certificates"

	servingTTL     = 24 * time.Hour
	maxRequestBody = 64 << 10
)

// IssueRequest is the JSON body of POST /v1/certificates.
type IssueRequest struct {
	ID  string `json:"id"`
	CSR []byte `json:"csr"` // DER, base64 in JSON
}

// IssueResponse is the JSON answer to a successful IssueRequest.
type IssueResponse struct {
	Chain [][]byte `json:"chain"` // DER, leaf first
	Roots [][]byte `json:"roots"` // DER
}

type errorResponse struct {
	Error string `json:"error"`
}

// ServerConfig configures a Server.
type ServerConfig struct {
	CA            *CA
	Authenticator Authenticator
	Authorizer    Authorizer
	Logger        *slog.Logger
}

// Server issues certificates over HTTPS (TLS 1.3, HTTP/1.1) to authenticated callers
// for the identities they may hold: nodes for their workloads', a waypoint pod for its own.
type Server struct {
	cfg  ServerConfig
	log  *slog.Logger
	http *http.Server

	mu      sync.Mutex
	serving *tls.Certificate
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.CA == nil:
		return nil, errors.New("new ca server: no CA")
	case cfg.Authenticator == nil:
		return nil, errors.New("new ca server: no authenticator")
	case cfg.Authorizer == nil:
		return nil, errors.New("new ca server: no authorizer")
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(CertificatesPath, s.handleIssue)
	s.http = &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS13,
			NextProtos:     []string{"http/1.1"},
			GetCertificate: s.servingCertificate,
		},
		// An empty map disables HTTP/2.
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if _, err := s.servingCertificate(nil); err != nil {
		return nil, fmt.Errorf("new ca server: %w", err)
	}
	return s, nil
}

// Listen listens on addr, "unix:///path" or "host:port" as a Client dials it. A socket
// file left at path by a previous run is replaced.
func Listen(addr string) (net.Listener, error) {
	network, address, err := parseAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if network == "unix" {
		if fi, err := os.Lstat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(address)
		}
	}
	l, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

// Serve accepts HTTPS connections on l until Close; it returns nil after Close.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(tls.NewListener(l, s.http.TLSConfig))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the server and its connections. Idempotent.
func (s *Server) Close() error {
	if err := s.http.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// servingCertificate returns the "ambit-ca" certificate, re-signed at half-life.
func (s *Server) servingCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.CA.now()
	if c := s.serving; c != nil {
		half := c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
		if now.Before(half) {
			return c, nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serving key: %w", err)
	}
	leaf, err := s.cfg.CA.signLeaf(key.Public(), func(t *x509.Certificate) {
		t.DNSNames = []string{ServerName}
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}, servingTTL)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	s.serving = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	return s.serving, nil
}

func (s *Server) handleIssue(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed, use POST")
		return
	}
	caller, err := s.cfg.Authenticator.Authenticate(r)
	if err != nil && !errors.Is(err, ErrUnauthenticated) {
		// The authenticator could not decide (e.g. the API server is unreachable): the
		// node should retry, not treat its credentials as bad.
		s.log.Error("ca authentication unavailable", "remote", r.RemoteAddr, "error", err)
		writeError(w, http.StatusServiceUnavailable, "authentication unavailable")
		return
	}
	if err != nil {
		s.log.Warn("ca request unauthenticated", "remote", r.RemoteAddr, "error", err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="ambit-ca"`)
		writeError(w, http.StatusUnauthorized, "unauthenticated")
		return
	}
	var req IssueRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.log.Info("ca request invalid", logAttrs(caller, "error", err)...)
		writeError(w, http.StatusBadRequest, "decode request body: "+err.Error())
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "decode request body: trailing data after JSON object")
		return
	}
	id, err := spiffeid.FromString(req.ID)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("field id %q: %v", req.ID, err))
		return
	}
	if len(req.CSR) == 0 {
		writeError(w, http.StatusBadRequest, "field csr: missing")
		return
	}
	if err := s.cfg.Authorizer.Authorize(r.Context(), caller, id); err != nil {
		if errors.Is(err, identity.ErrUnavailable) {
			s.log.Error("ca authorization unavailable", logAttrs(caller, "id", id.String(), "error", err)...)
			writeError(w, http.StatusServiceUnavailable, "authorization unavailable")
			return
		}
		s.log.Warn("ca identity refused", logAttrs(caller, "id", id.String(), "error", err)...)
		msg := fmt.Sprintf("%s may not hold %s", caller, id)
		if caller.Workload != nil {
			// The reason concerns only the caller's own pod; a node is not told where
			// other workloads run.
			msg += ": " + err.Error()
		}
		writeError(w, http.StatusForbidden, msg)
		return
	}
	chain, err := s.cfg.CA.Sign(id, req.CSR)
	if err != nil {
		if errors.Is(err, ErrBadRequest) {
			s.log.Info("ca request invalid", logAttrs(caller, "id", id.String(), "error", err)...)
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		s.log.Error("ca sign failed", logAttrs(caller, "id", id.String(), "error", err)...)
		writeError(w, http.StatusInternalServerError, "sign failed")
		return
	}
	resp := IssueResponse{}
	for _, c := range chain {
		resp.Chain = append(resp.Chain, c.Raw)
	}
	for _, c := range s.cfg.CA.Roots() {
		resp.Roots = append(resp.Roots, c.Raw)
	}
	s.log.Info("ca certificate issued", logAttrs(caller, "id", id.String(),
		"serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter)...)
	writeJSON(w, http.StatusOK, resp)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorResponse{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// logAttrs are caller's log keys (node, or pod and service_account), then more.
func logAttrs(c Caller, more ...any) []any {
	if w := c.Workload; w != nil {
		return append([]any{"pod", w.Namespace + "/" + w.Name, "service_account", w.Namespace + "/" + w.ServiceAccount}, more...)
	}
	return append([]any{"node", c.Node}, more...)
}
