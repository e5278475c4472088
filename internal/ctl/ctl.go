// Package ctl is ambitctl: commands that inspect and manage an Ambit node.
package ctl

import (
	"fmt"
	"io"
)

const usage = `usage: ambitctl <command> [flags]

commands:
  status      show a node's workloads, certificates, captured pods and connections
  dump        print a node's raw /config_dump JSON
  policy      explain -from SRC -to DST:PORT: would SRC reach DST:PORT, and which policy
              decides (asks the destination's node); list [WORKLOAD]: the policies in
              force per local workload
  verify      check a tcpdump capture of the wire between nodes: only HBONE on :15008,
              TLS 1.3, and a marker string nowhere in clear
  teardown    remove every eBPF program, pin, rule and route ztunnel installed on this node
  waypoint    apply|list|delete -n NS: the waypoint Gateways of a Kubernetes cluster
`

// Main runs the command line args (without the program name) and returns the exit
// status: 0 done, 1 failed, 2 misused.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "status":
		err = status(args[1:], stdout, false)
	case "dump":
		err = status(args[1:], stdout, true)
	case "policy":
		err = policyCmd(args[1:], stdout)
	case "verify":
		err = verify(args[1:], stdout)
	case "teardown":
		err = teardown(args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "ambitctl: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "ambitctl:", err)
		return 1
	}
	return 0
}
