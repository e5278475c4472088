// Command ambit-ca runs Ambit's built-in certificate authority: it issues
// workload certificates to node tunnels over HTTPS, each node only for the
// identities of the workloads scheduled on it (identity/ca/service).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/ambitmesh/ambit/identity/ca/service"
	"github.com/ambitmesh/ambit/internal/daemon"
)

func main() {
	var (
		cfg  service.Config
		proc daemon.Config
	)
	cfg.RegisterFlags(flag.CommandLine)
	proc.RegisterLogFlags(flag.CommandLine)
	flag.Parse()
	d, err := daemon.New(proc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-ca:", err)
		os.Exit(2)
	}
	err = d.Run(func(ctx context.Context) error { return service.Run(ctx, cfg, d.Logger) })
	if err != nil {
		d.Logger.Error("ambit-ca stopped", "error", err)
		os.Exit(1)
	}
}
