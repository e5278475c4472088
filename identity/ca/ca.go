// Package ca is Ambit's built-in certificate authority: a self-signed root kept
// in a state directory, a signer for workload leaves, an HTTPS server that
// issues them only to the node a workload runs on, and a client for it.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

const (
	// KeyFile and RootFile are the names of the root key (0600) and root
	// certificate (0644, public) in the state directory.
	KeyFile  = "root-key.pem"
	RootFile = "root.pem"

	// DefaultLeafTTL is the lifetime of workload certificates (rotated at half-life).
	DefaultLeafTTL = 24 * time.Hour

	rootTTL = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so peers with slightly late clocks accept new certificates.
	clockSkew = time.Minute
)

// ErrBadRequest marks a Sign error caused by the request (id or CSR), not the CA.
var ErrBadRequest = errors.New("bad certificate request")

// Config configures a CA.
type Config struct {
	StateDir    string               // root key (0600) + root cert; created 0700; reused across restarts
	TrustDomain spiffeid.TrustDomain // default cluster.local
	LeafTTL     time.Duration        // default 24h
	Now         func() time.Time     // optional, for tests
}

// CA signs workload certificates with a persisted root.
type CA struct {
	td   spiffeid.TrustDomain
	ttl  time.Duration
	now  func() time.Time
	root *x509.Certificate
	key  *ecdsa.PrivateKey
}

// New loads the root from cfg.StateDir or creates a self-signed ECDSA P-256
// root valid for 10 years. It refuses a key file readable by group or other.
func New(cfg Config) (*CA, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("new ca: no state directory")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)
	}
	if cfg.LeafTTL == 0 {
		cfg.LeafTTL = DefaultLeafTTL
	}
	if cfg.LeafTTL < 0 {
		return nil, fmt.Errorf("new ca: negative leaf ttl %v", cfg.LeafTTL)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &CA{td: cfg.TrustDomain, ttl: cfg.LeafTTL, now: cfg.Now}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("new ca: create state directory: %w", err)
	}
	keyPath := filepath.Join(cfg.StateDir, KeyFile)
	rootPath := filepath.Join(cfg.StateDir, RootFile)
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := c.create(keyPath, rootPath); err != nil {
			return nil, fmt.Errorf("new ca: %w", err)
		}
		return c, nil
	}
	if err := c.load(keyPath, rootPath); err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	return c, nil
}

func (c *CA) create(keyPath, rootPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"ambit"}, CommonName: "ambit root CA " + c.td.Name()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // leaves are signed by the root directly
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{c.td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create root certificate: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("parse root certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal root key: %w", err)
	}
	// The certificate goes first: a key without its certificate is refused on load,
	// a certificate without its key is replaced.
	if err := writeFileAtomic(rootPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	c.root, c.key = root, key
	return nil
}

func (c *CA) load(keyPath, rootPath string) error {
	fi, err := os.Stat(keyPath)
	if err != nil {
		return fmt.Errorf("stat root key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("root key %s has mode %04o: must not be accessible by group or other (chmod 600)", keyPath, fi.Mode().Perm())
	}
	key, err := readKey(keyPath)
	if err != nil {
		return err
	}
	root, err := readCert(rootPath)
	if err != nil {
		return err
	}
	if !key.PublicKey.Equal(root.PublicKey) {
		return fmt.Errorf("root certificate %s does not match key %s", rootPath, keyPath)
	}
	if !root.IsCA {
		return fmt.Errorf("root certificate %s is not a CA", rootPath)
	}
	if now := c.now(); !now.Before(root.NotAfter) {
		return fmt.Errorf("root certificate %s expired at %s", rootPath, root.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, u := range root.URIs {
		if td, err := spiffeid.TrustDomainFromURI(u); err == nil && td != c.td {
			return fmt.Errorf("root certificate %s is for trust domain %q, configured %q", rootPath, td, c.td)
		}
	}
	c.root, c.key = root, key
	return nil
}

// readPEM returns the DER of the first PEM block in the file, which must be of type
// typ; what names the file in errors.
func readPEM(path, what, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("%s %s: no PEM %q block", what, path, typ)
	}
	return blk.Bytes, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	der, err := readPEM(path, "root key", "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("root key %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("root key %s: not an ECDSA P-256 key", path)
	}
	return ek, nil
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "root certificate", "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("root certificate %s: %w", path, err)
	}
	return cert, nil
}

// LoadRoots reads PEM certificates (e.g. a CA's root.pem) for clients to trust.
func LoadRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load roots: %w", err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("load roots %s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("load roots %s: no PEM certificates", path)
	}
	return out, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	// 128 random bits, never zero (serials must be positive).
	max := new(big.Int).Lsh(big.NewInt(1), 128)
	n, err := rand.Int(rand.Reader, max)
	if err != nil {
		return nil, fmt.Errorf("random serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// TrustDomain is the trust domain whose identities the CA signs.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Roots returns the trust roots (a copy of the slice).
func (c *CA) Roots() []*x509.Certificate { return []*x509.Certificate{c.root} }

// Sign checks the CSR's signature and key (ECDSA P-256) and returns a leaf
// for id signed by the root: exactly one URI SAN (id), no other SANs, digital
// signature + key encipherment, server + client auth, LeafTTL long (never past
// the root), random serial. Errors caused by the request wrap ErrBadRequest.
func (c *CA) Sign(id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	if id.IsZero() {
		return nil, fmt.Errorf("sign: empty id: %w", ErrBadRequest)
	}
	if !id.MemberOf(c.td) {
		return nil, fmt.Errorf("sign %s: not in trust domain %q: %w", id, c.td, ErrBadRequest)
	}
	if _, _, err := identity.ParseWorkloadID(id); err != nil {
		return nil, fmt.Errorf("sign: %w: %w", ErrBadRequest, err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign %s: parse csr: %w: %w", id, ErrBadRequest, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign %s: csr signature: %w: %w", id, ErrBadRequest, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("sign %s: csr key is not ECDSA P-256: %w", id, ErrBadRequest)
	}
	for _, u := range csr.URIs {
		if u.String() != id.String() {
			return nil, fmt.Errorf("sign %s: csr names %s: %w", id, u, ErrBadRequest)
		}
	}
	leaf, err := c.signLeaf(pub, func(t *x509.Certificate) {
		t.URIs = []*url.URL{id.URL()}
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}, c.ttl)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	return []*x509.Certificate{leaf}, nil
}

// signLeaf signs a non-CA certificate for pub valid for ttl from now (never past the root).
func (c *CA) signLeaf(pub crypto.PublicKey, set func(*x509.Certificate), ttl time.Duration) (*x509.Certificate, error) {
	now := c.now()
	if !now.Before(c.root.NotAfter) {
		return nil, fmt.Errorf("root expired at %s", c.root.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             maxTime(now.Add(-clockSkew), c.root.NotBefore),
		NotAfter:              minTime(now.Add(ttl), c.root.NotAfter),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
	}
	set(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.root, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
