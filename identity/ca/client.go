package ca

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
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	Addr      string              // "unix:///path/ca.sock" or "host:port"
	TokenFile string              // bearer token, re-read on each request (rotation)
	Roots     []*x509.Certificate // verify the CA's serving certificate (ServerName "ambit-ca")
}

// Client implements identity.Issuer against a Server.
type Client struct {
	cfg  ClientConfig
	http *http.Client
}

var _ identity.Issuer = (*Client)(nil)

// NewClient checks cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.TokenFile == "" {
		return nil, errors.New("new ca client: no token file")
	}
	if len(cfg.Roots) == 0 {
		return nil, errors.New("new ca client: no roots to verify the CA")
	}
	network, address, err := parseAddr(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("new ca client: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range cfg.Roots {
		pool.AddCert(r)
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, address)
		},
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			RootCAs:    pool,
			ServerName: ServerName,
			NextProtos: []string{"http/1.1"},
		},
		ForceAttemptHTTP2:   false,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        2,
		IdleConnTimeout:     time.Minute,
	}
	return &Client{cfg: cfg, http: &http.Client{Transport: tr}}, nil
}

func parseAddr(addr string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !strings.HasPrefix(path, "/") {
			return "", "", fmt.Errorf("address %q: unix socket path must be absolute (unix:///path)", addr)
		}
		return "unix", path, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("address %q: want unix:///path or host:port: %w", addr, err)
	}
	return "tcp", addr, nil
}

// Close releases idle connections. Idempotent.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// Issue implements identity.Issuer. A 403 answer wraps identity.ErrNotAuthorized.
func (c *Client) Issue(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, []*x509.Certificate, error) {
	tok, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: read token: %w", id, err)
	}
	token := strings.TrimSpace(string(tok))
	if token == "" {
		return nil, nil, fmt.Errorf("issue %s: token file %s is empty", id, c.cfg.TokenFile)
	}
	body, err := json.Marshal(IssueRequest{ID: id.String(), CSR: csrDER})
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: encode request: %w", id, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+ServerName+CertificatesPath, bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", id, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", id, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: read response: %w", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		switch resp.StatusCode {
		case http.StatusForbidden:
			return nil, nil, fmt.Errorf("issue %s: ca refused: %s: %w", id, msg, identity.ErrNotAuthorized)
		case http.StatusUnauthorized:
			return nil, nil, fmt.Errorf("issue %s: ca rejected the token: %s", id, msg)
		default:
			return nil, nil, fmt.Errorf("issue %s: ca answered %s: %s", id, resp.Status, msg)
		}
	}
	var ir IssueResponse
	if err := json.Unmarshal(raw, &ir); err != nil {
		return nil, nil, fmt.Errorf("issue %s: decode response: %w", id, err)
	}
	chain, err := parseDERs(ir.Chain)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: response chain: %w", id, err)
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("issue %s: response chain is empty", id)
	}
	roots, err := parseDERs(ir.Roots)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: response roots: %w", id, err)
	}
	return chain, roots, nil
}

func parseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// NewCertManager returns a certificate manager whose certificates this CA issues: addr
// and tokenFile as in ClientConfig, rootFile the PEM roots that verify the CA and seed
// the trust bundle.
func NewCertManager(addr, tokenFile, rootFile string, td spiffeid.TrustDomain, log *slog.Logger) (*identity.Manager, error) {
	if addr == "" {
		return nil, errors.New("a CA address is required when no identity source is given")
	}
	if rootFile == "" {
		return nil, errors.New("a CA root file is required")
	}
	roots, err := LoadRoots(rootFile)
	if err != nil {
		return nil, err
	}
	client, err := NewClient(ClientConfig{Addr: addr, TokenFile: tokenFile, Roots: roots})
	if err != nil {
		return nil, fmt.Errorf("ca client: %w", err)
	}
	mgr, err := identity.NewManager(identity.ManagerConfig{Issuer: client, TrustDomain: td, Roots: roots, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("certificate manager: %w", err)
	}
	return mgr, nil
}
