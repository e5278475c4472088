// Command istio-hbone is a benchmark peer: a TCP relay over Istio's Go HBONE package
// (istio.io/istio/pkg/hbone), mutual TLS from PEM files. It is built by tests/tools/build.sh
// in this scratch module so Istio never enters Ambit's go.mod.
//
//	istio-hbone -mode client -listen 198.18.0.1:23000 -proxy 198.18.0.2:23100 -target 198.18.2.11:5201 -cert c.pem -key c.key -ca ca.pem -server-name server.bench
//	istio-hbone -mode server -listen 198.18.0.2:23100 -cert s.pem -key s.key -ca ca.pem
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

func main() {
	mode := flag.String("mode", "", "client (TCP in, HBONE out) or server (HBONE in, TCP to the CONNECT authority)")
	listen := flag.String("listen", "", "address to listen on")
	proxy := flag.String("proxy", "", "client: the HBONE server address")
	target := flag.String("target", "", "client: the CONNECT authority (where the server relays to)")
	certFile := flag.String("cert", "", "certificate PEM")
	keyFile := flag.String("key", "", "private key PEM")
	caFile := flag.String("ca", "", "CA bundle PEM that signs the peer")
	serverName := flag.String("server-name", "", "client: expected DNS name in the server certificate")
	flag.Parse()
	if err := run(*mode, *listen, *proxy, *target, *certFile, *keyFile, *caFile, *serverName); err != nil {
		fmt.Fprintln(os.Stderr, "istio-hbone:", err)
		os.Exit(1)
	}
}

func run(mode, listen, proxy, target, certFile, keyFile, caFile, serverName string) error {
	// Istio's package logs every stream at info; at thousands of connections that is the
	// benchmark's cost, not the tunnel's.
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.ErrorLevel)
	}
	if listen == "" || certFile == "" || keyFile == "" || caFile == "" {
		return errors.New("-listen, -cert, -key and -ca are required")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load key pair: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); ln.Close() }()

	switch mode {
	case "server":
		srv := hbone.NewServer()
		srv.Protocols.SetHTTP2(true) // h2 over TLS, not only h2c
		srv.TLSConfig = &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
		}
		err := srv.ServeTLS(ln, "", "")
		if ctx.Err() != nil {
			return nil
		}
		return err
	case "client":
		if proxy == "" || target == "" {
			return errors.New("client mode needs -proxy and -target")
		}
		d := hbone.NewDialer(hbone.Config{ProxyAddress: proxy, TLS: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{cert},
			RootCAs:      pool,
			ServerName:   serverName,
		}})
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			go relay(ctx, d, c, target)
		}
	default:
		return fmt.Errorf("unknown -mode %q (want client or server)", mode)
	}
}

func relay(ctx context.Context, d hbone.Dialer, c net.Conn, target string) {
	defer c.Close()
	up, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		fmt.Fprintf(os.Stderr, "istio-hbone: dial %s: %v\n", target, err)
		return
	}
	defer up.Close()
	var once sync.Once
	done := func() { once.Do(func() { c.Close(); up.Close() }) }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(up, c); done() }()
	go func() { defer wg.Done(); io.Copy(c, up); done() }()
	wg.Wait()
}
