// Command ambit-controller is Ambit's Kubernetes waypoint controller: it runs the
// Gateways of the waypoint class (install/controller): flags -> controller.Config ->
// controller.Run.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ambitmesh/ambit/install/controller"
	"github.com/ambitmesh/ambit/internal/daemon"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ambit-controller:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var (
		cfg  controller.Config
		proc daemon.Config
	)
	fs := flag.NewFlagSet("ambit-controller", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	proc.RegisterLogFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := daemon.New(proc)
	if err != nil {
		return err
	}
	defer d.Close()
	c, err := controller.New(cfg, controller.Deps{Logger: d.Logger})
	if err != nil {
		return err
	}
	return d.Run(c.Run)
}
