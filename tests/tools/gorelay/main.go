// Command gorelay is the benchmark's floor for a user-space relay written in Go: plain
// TCP in, plain TCP out, one goroutine per direction, io.Copy (splice on Linux), no
// crypto, no framing, no capture. A pair of them between the nodes is the least a
// two-relay path costs on a machine; `go run ./tests/bench -paths go-relay,...` runs it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to accept on")
	target := flag.String("target", "", "address to relay each connection to")
	procs := flag.Int("procs", 1, "GOMAXPROCS (1: as ztunnel runs while its work fits on one core)")
	flag.Parse()
	if *listen == "" || *target == "" {
		fmt.Fprintln(os.Stderr, "usage: gorelay -listen ADDR -target ADDR [-procs N]")
		os.Exit(2)
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // e.g. out of descriptors: back off, as a relay would
			log.Print(err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go relay(c.(*net.TCPConn), *target)
	}
}

// relay copies both ways until both directions ended, half-closing each as it ends.
func relay(down *net.TCPConn, target string) {
	defer down.Close()
	c, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("dial %s: %v", target, err)
		return
	}
	up := c.(*net.TCPConn)
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, down)
		_ = up.CloseWrite()
	}()
	_, _ = io.Copy(down, up)
	_ = down.CloseWrite()
	<-done
}
