package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
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
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fs, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ambit bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fs, fmt.Errorf("create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fs, err
	}
	if err := writePEM(fs.CA, "CERTIFICATE", caDER, 0o644); err != nil {
		return fs, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			DNSNames: []string{cn}, IPAddresses: ips,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("create %s certificate: %w", cn, err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		return writePEM(keyFile, "PRIVATE KEY", kder, 0o600)
	}
	if err := leaf(2, serverName, x509.ExtKeyUsageServerAuth, []net.IP{serverIP.AsSlice()}, fs.ServerCert, fs.ServerKey); err != nil {
		return fs, err
	}
	if err := leaf(3, "client.bench", x509.ExtKeyUsageClientAuth, nil, fs.ClientCert, fs.ClientKey); err != nil {
		return fs, err
	}
	return fs, nil
}

func writePEM(file, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(file, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}
