// Command ztunnel is Ambit's node tunnel: flags -> ztunnel.Config -> ztunnel.Run.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ambitmesh/ambit/internal/daemon"
	"github.com/ambitmesh/ambit/ztunnel"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var (
		cfg  ztunnel.Config
		proc daemon.Config
		src  sources
	)
	if err := flags(&cfg, &proc, &src).Parse(args); err != nil {
		return err
	}
	d, err := daemon.New(proc)
	if err != nil {
		return err
	}
	defer d.Close()
	deps := ztunnel.Deps{Logger: d.Logger, Registry: d.Registry}
	if err := src.wire(&deps, cfg); err != nil {
		return err
	}
	z, err := ztunnel.New(cfg, deps)
	if err != nil {
		return err
	}
	return d.Run(z.Run)
}

// flags are ztunnel's own, the process's (logging, -gomaxprocs) and the sources'.
func flags(cfg *ztunnel.Config, proc *daemon.Config, src *sources) *flag.FlagSet {
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	proc.RegisterFlags(fs)
	src.registerFlags(fs)
	return fs
}
