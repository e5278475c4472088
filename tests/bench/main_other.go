//go:build !linux

// Command bench is `make bench`; it needs Linux (network namespaces, eBPF, /proc).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench: Linux only")
	os.Exit(1)
}
