// Command ambitctl inspects and manages an Ambit node (internal/ctl) and the waypoints
// of a Kubernetes cluster (internal/ctl/waypointcmd, kept apart so that the node
// commands do not link client-go).
package main

import (
	"os"

	"github.com/ambitmesh/ambit/internal/ctl"
	"github.com/ambitmesh/ambit/internal/ctl/waypointcmd"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "waypoint" {
		os.Exit(waypointcmd.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr))
}
