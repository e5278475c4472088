package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambitmesh/ambit/identity/ca"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("cluster.local")
	idA = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/a")
	idB = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/b")
)

func newCA(tb testing.TB, cfg ca.Config) *ca.CA {
	tb.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(tb.TempDir(), "state")
	}
	c, err := ca.New(cfg)
	if err != nil {
		tb.Fatalf("ca.New: %v", err)
	}
	return c
}

func newCSR(tb testing.TB, key crypto.Signer, uris ...string) []byte {
	tb.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func p256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func mode(tb testing.TB, path string) os.FileMode {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestRootPersistedAndReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first := newCA(t, ca.Config{StateDir: dir})
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("state dir mode %04o, want 0700", got)
	}
	if got := mode(t, filepath.Join(dir, ca.KeyFile)); got != 0o600 {
		t.Errorf("key mode %04o, want 0600", got)
	}
	if got := mode(t, filepath.Join(dir, ca.RootFile)); got != 0o644 {
		t.Errorf("root.pem mode %04o, want 0644", got)
	}
	root := first.Roots()[0]
	if !root.IsCA || root.PublicKeyAlgorithm != x509.ECDSA || root.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("root is not an ECDSA P-256 CA")
	}
	if life := root.NotAfter.Sub(root.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("root lifetime %v, want 10 years", life)
	}
	onDisk, err := ca.LoadRoots(filepath.Join(dir, ca.RootFile))
	if err != nil || !onDisk[0].Equal(root) {
		t.Fatalf("root.pem does not hold the root: %v", err)
	}

	second := newCA(t, ca.Config{StateDir: dir})
	if !second.Roots()[0].Equal(root) {
		t.Fatal("restart made a new root")
	}
	// A certificate signed after the restart chains to the original root.
	chain, err := second.Sign(idA, newCSR(t, p256(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, first.Roots())); err != nil {
		t.Fatalf("leaf after restart does not chain to the first root: %v", err)
	}

	if _, err := ca.New(ca.Config{StateDir: dir, TrustDomain: spiffeid.RequireTrustDomainFromString("other.local")}); err == nil ||
		!strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("reusing a root for another trust domain: %v, want an error naming the trust domain", err)
	}
}

func TestRefusesExposedKey(t *testing.T) {
	for _, m := range []os.FileMode{0o644, 0o640, 0o604} {
		dir := filepath.Join(t.TempDir(), "state")
		newCA(t, ca.Config{StateDir: dir})
		key := filepath.Join(dir, ca.KeyFile)
		if err := os.Chmod(key, m); err != nil {
			t.Fatal(err)
		}
		_, err := ca.New(ca.Config{StateDir: dir})
		if err == nil || !strings.Contains(err.Error(), "group or other") {
			t.Fatalf("key mode %04o: %v, want refusal", m, err)
		}
	}
}

func TestRefusesBrokenState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	newCA(t, ca.Config{StateDir: dir})
	other := filepath.Join(t.TempDir(), "other")
	newCA(t, ca.Config{StateDir: other})
	// A root that does not belong to the key.
	b, err := os.ReadFile(filepath.Join(other, ca.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ca.RootFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.New(ca.Config{StateDir: dir}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched root: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ca.KeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.New(ca.Config{StateDir: dir}); err == nil || !strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatalf("junk key: %v", err)
	}
	if _, err := ca.New(ca.Config{}); err == nil {
		t.Fatal("New without state dir succeeded")
	}
}

func TestSignLeaf(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newCA(t, ca.Config{Now: func() time.Time { return now }})
	key := p256(t)
	chain, err := c.Sign(idA, newCSR(t, key, idA.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 1 {
		t.Fatalf("chain of %d, want the leaf alone", len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != idA.String() {
		t.Errorf("URI SANs %v, want exactly %s", leaf.URIs, idA)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() || !pub.Equal(key.Public()) {
		t.Errorf("leaf key is not the CSR's P-256 key")
	}
	if want := now.Add(24 * time.Hour); !leaf.NotAfter.Equal(want) {
		t.Errorf("NotAfter %v, want %v (24h default)", leaf.NotAfter, want)
	}
	if leaf.NotBefore.After(now) {
		t.Errorf("NotBefore %v after issue time %v", leaf.NotBefore, now)
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Errorf("IsCA %v, KeyUsage %v", leaf.IsCA, leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage %v, want server+client auth", leaf.ExtKeyUsage)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.Roots()[0])
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			t.Errorf("leaf does not chain to the root for %v: %v", eku, err)
		}
	}
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, c.Roots()), x509svid.WithTime(now))
	if err != nil || id != idA {
		t.Errorf("x509svid.Verify = %v, %v", id, err)
	}
	again, err := c.Sign(idA, newCSR(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if again[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 || leaf.SerialNumber.Sign() <= 0 {
		t.Error("serials not random and positive")
	}
}

func TestSignTTL(t *testing.T) {
	start := time.Now()
	dir := filepath.Join(t.TempDir(), "state")
	c := newCA(t, ca.Config{StateDir: dir, LeafTTL: time.Hour, Now: func() time.Time { return start }})
	chain, err := c.Sign(idA, newCSR(t, p256(t)))
	if err != nil {
		t.Fatal(err)
	}
	if want := start.Add(time.Hour); !chain[0].NotAfter.Equal(want.Truncate(time.Second)) {
		t.Errorf("NotAfter %v, want %v", chain[0].NotAfter, want)
	}
	// Close to the root's end, leaves stop with the root.
	rootEnd := c.Roots()[0].NotAfter
	late := newCA(t, ca.Config{StateDir: dir, Now: func() time.Time { return rootEnd.Add(-time.Hour) }})
	chain, err = late.Sign(idA, newCSR(t, p256(t)))
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(rootEnd) {
		t.Errorf("NotAfter %v, want the root's %v", chain[0].NotAfter, rootEnd)
	}
}

func TestSignRejects(t *testing.T) {
	c := newCA(t, ca.Config{})
	good := newCSR(t, p256(t))
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff // inside the signature
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   spiffeid.ID
		csr  []byte
		want string
	}{
		{"wrong signature", idA, badSig, "signature"},
		{"P-384 key", idA, newCSR(t, p384), "P-256"},
		{"ed25519 key", idA, newCSR(t, edKey), "P-256"},
		{"garbage csr", idA, []byte("not a csr"), "parse csr"},
		{"empty id", spiffeid.ID{}, good, "empty id"},
		{"foreign trust domain", spiffeid.RequireFromString("spiffe://other.local/ns/default/sa/a"), good, "trust domain"},
		{"not a workload id", spiffeid.RequireFromString("spiffe://cluster.local/foo"), good, "/ns/<namespace>/sa/<service-account>"},
		{"csr names another id", idA, newCSR(t, p256(t), idB.String()), "csr names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Sign(tt.id, tt.csr)
			if !errors.Is(err, ca.ErrBadRequest) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sign: %v, want ErrBadRequest containing %q", err, tt.want)
			}
		})
	}
}
