// Command waypoint is Ambit's L7 proxy for the Services and workloads bound to it:
// flags -> waypoint.Config -> waypoint.Run.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ambitmesh/ambit/internal/daemon"
	"github.com/ambitmesh/ambit/waypoint"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var (
		cfg  waypoint.Config
		proc daemon.Config
		src  sources
	)
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	src.registerFlags(fs)
	proc.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := daemon.New(proc)
	if err != nil {
		return err
	}
	defer d.Close()
	deps := waypoint.Deps{Logger: d.Logger, Registry: d.Registry}
	if err := src.wire(&deps, cfg); err != nil {
		return err
	}
	w, err := waypoint.New(cfg, deps)
	if err != nil {
		return err
	}
	return d.Run(w.Run)
}
