// Command goreverseproxy is the L7 benchmark's Go baseline: Go's own
// net/http/httputil.ReverseProxy in front of one plain HTTP backend, keep-alive both
// ways, no logging. The waypoint's target is measured against it in the same place
// (`go run ./tests/bench -tests l7`).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to serve HTTP on")
	target := flag.String("target", "", "backend host:port")
	procs := flag.Int("procs", 0, "GOMAXPROCS (0: the runtime's default)")
	flag.Parse()
	if *listen == "" || *target == "" {
		fmt.Fprintln(os.Stderr, "usage: goreverseproxy -listen ADDR -target HOST:PORT [-procs N]")
		os.Exit(2)
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	backend := &url.URL{Scheme: "http", Host: *target}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(backend)
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     time.Hour,
		},
		ErrorLog: log.New(os.Stderr, "", 0),
	}
	srv := &http.Server{Addr: *listen, Handler: proxy, ReadHeaderTimeout: 30 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
