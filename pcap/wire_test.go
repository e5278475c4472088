package pcap

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

var marker = []byte("AMBIT-PLAINTEXT-MARKER-7d1c9e")

func selfSigned(tb testing.TB) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pcap-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("198.18.2.10")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// exchange connects from client to server through wrap, sends marker in two halves (each
// echoed before the next, so they travel in different segments) and reads the echo.
func exchange(tb testing.TB, client *netns.Pod, server netip.AddrPort, wrap func(net.Conn) net.Conn) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := client.Dial(ctx, "tcp", server.String())
	if err != nil {
		tb.Fatal(err)
	}
	c := wrap(raw)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	half := len(marker) / 2
	for _, part := range [][]byte{marker[:half], marker[half:]} {
		if _, err := c.Write(part); err != nil {
			tb.Fatal(err)
		}
		got := make([]byte, len(part))
		if _, err := io.ReadFull(c, got); err != nil {
			tb.Fatal(err)
		}
		if !bytes.Equal(got, part) {
			tb.Fatalf("echo %q, want %q", got, part)
		}
	}
}

// tlsEcho serves a TLS echo in pod until the test ends.
func tlsEcho(tb testing.TB, pod *netns.Pod, cfg *tls.Config) netip.AddrPort {
	l, err := pod.Listen("tcp", netip.AddrPortFrom(pod.IP, 8443).String())
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	tb.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, cfg)
			io.Copy(tc, tc)
			tc.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func capture(tb testing.TB, ns *netns.NS, iface string) *netns.Capture {
	tb.Helper()
	c, err := ns.Tcpdump(context.Background(), iface, filepath.Join(tb.TempDir(), iface+".pcap"), "tcp")
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func stopAndRead(tb testing.TB, c *netns.Capture) []Packet {
	tb.Helper()
	if err := c.Stop(); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("tcpdump %s: %s", c.File, c.Output())
	pkts, err := ReadFile(c.File)
	if err != nil {
		tb.Fatal(err)
	}
	if len(pkts) == 0 {
		tb.Fatalf("capture %s is empty; tcpdump said: %s", c.File, c.Output())
	}
	return pkts
}

func TestWireTLS(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	client, server := topo.Nodes[0].Pods[0], topo.Nodes[1].Pods[0]
	cert := selfSigned(t)
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)
	tests := []struct {
		name    string
		version uint16
	}{
		{"tls13", tls.VersionTLS13},
		{"tls12", tls.VersionTLS12},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tlsEcho(t, server, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tc.version, MaxVersion: tc.version})
			// Ethernet on the underlay bridge, Linux cooked v2 on "any" in the client node.
			ul := capture(t, topo.Underlay, "br0")
			anyCap := capture(t, topo.Nodes[0].NS, "any")
			exchange(t, client, addr, func(c net.Conn) net.Conn {
				return tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "198.18.2.10", MinVersion: tc.version, MaxVersion: tc.version})
			})
			for i, pk := range [][]Packet{stopAndRead(t, ul), stopAndRead(t, anyCap)} {
				t.Cleanup(func() {
					if t.Failed() {
						t.Logf("capture %d: %d packets", i, len(pk))
						for _, p := range pk {
							t.Log(p)
						}
					}
				})
				conns := Connections(pk)
				if len(conns) != 1 || conns[0].Src.Addr() != client.IP || conns[0].Dst != addr {
					t.Fatalf("connections %v, want one %s -> %s", conns, client.IP, addr)
				}
				streams := TCPStreams(pk)
				v, err := NegotiatedTLSVersion(streams[conns[0].Reverse()])
				if err != nil {
					t.Fatalf("server stream: %v", err)
				}
				if v != tc.version {
					t.Fatalf("version %#x, want %#x", v, tc.version)
				}
				if ContainsPlaintext(pk, marker) {
					t.Fatal("marker visible in a TLS capture")
				}
				if cs := streams[conns[0]]; len(cs) == 0 || cs[0] != RecordHandshake {
					t.Fatalf("client stream does not start with a handshake record: %x", cs[:min(len(cs), 8)])
				}
			}
		})
	}
}

func TestWirePlaintext(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	client, server := topo.Nodes[0].Pods[0], topo.Nodes[1].Pods[0]
	echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())
	ul := capture(t, topo.Underlay, "br0")
	exchange(t, client, echo.Addr, func(c net.Conn) net.Conn { return c })
	pkts := stopAndRead(t, ul)
	if !ContainsPlaintext(pkts, marker) {
		t.Fatal("plaintext marker not found")
	}
	for _, p := range pkts {
		if bytes.Contains(p.Payload, marker) {
			t.Fatalf("marker whole in one segment %v: the split case is not exercised", p)
		}
	}
	if _, err := NegotiatedTLSVersion(TCPStreams(pkts)[Flow{echo.Addr, Connections(pkts)[0].Src}]); err == nil {
		t.Fatal("plaintext stream parsed as TLS")
	}
}
