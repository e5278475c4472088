package main

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/ambitmesh/ambit/tests/testpki"
)

// serverName is the DNS name in the peers' server certificate, which clients verify.
const serverName = "server.bench"

// certFiles are the PEM files of a throw-away CA and its two leaves, for the TLS peers.
type certFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// writeCerts makes an ECDSA P-256 CA, a server leaf (serverName and serverIP) and a client
// leaf in dir. Keys are written 0600 and live only as long as the run.
func writeCerts(dir string, serverIP netip.Addr) (certFiles, error) {
	fs := certFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client.key"),
	}
	const ttl = 24 * time.Hour
	ca, err := testpki.NewCA("ambit bench CA", ttl)
	if err != nil {
		return fs, err
	}
	if err := writeFile(fs.CA, ca.CertPEM, 0o644); err != nil {
		return fs, err
	}
	leaf := func(cn string, usage x509.ExtKeyUsage, ips []net.IP, certFile, keyFile string) error {
		l, err := ca.Issue(pkix.Name{CommonName: cn}, usage, ips, []string{cn}, ttl)
		if err != nil {
			return err
		}
		if err := writeFile(certFile, l.CertPEM, 0o644); err != nil {
			return err
		}
		return writeFile(keyFile, l.KeyPEM, 0o600)
	}
	if err := leaf(serverName, x509.ExtKeyUsageServerAuth, []net.IP{serverIP.AsSlice()}, fs.ServerCert, fs.ServerKey); err != nil {
		return fs, err
	}
	if err := leaf("client.bench", x509.ExtKeyUsageClientAuth, nil, fs.ClientCert, fs.ClientKey); err != nil {
		return fs, err
	}
	return fs, nil
}

func writeFile(file string, b []byte, mode os.FileMode) error {
	if err := os.WriteFile(file, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}
