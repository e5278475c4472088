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
	)
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	proc.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := daemon.New(proc)
	if err != nil {
		return err
	}
	defer d.Close()
	w, err := waypoint.New(cfg, waypoint.Deps{Logger: d.Logger, Registry: d.Registry})
	if err != nil {
		return err
	}
	return d.Run(w.Run)
}
