// Command ambitctl inspects and manages an Ambit node (internal/ctl).
package main

import (
	"os"

	"github.com/ambitmesh/ambit/internal/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
