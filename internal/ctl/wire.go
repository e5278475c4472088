package ctl

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/redirect"
	"github.com/ambitmesh/ambit/ztunnel"
)

func verify(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	marker := fs.String("marker", "", "plaintext string sent by a pod during the capture (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *marker == "" {
		return errors.New("usage: ambitctl verify -marker STRING capture.pcap")
	}
	v, err := pcap.VerifyWire(fs.Arg(0), []byte(*marker))
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, v)
	if !v.Encrypted() {
		return errors.New("the capture does NOT prove the wire is encrypted")
	}
	fmt.Fprintln(stdout, "verdict: encrypted (HBONE over TLS 1.3 only, marker not in clear)")
	return nil
}

func teardown(args []string, stdout io.Writer) error {
	cfg, err := teardownConfig(args)
	if err != nil {
		return err
	}
	if err := redirect.Teardown(cfg); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "capture removed")
	return nil
}

// teardownConfig takes what ztunnel installed from ztunnel's own capture flags, so
// the same values (and defaults) name the same pins, rule and route.
func teardownConfig(args []string) (redirect.Config, error) {
	fs := flag.NewFlagSet("teardown", flag.ContinueOnError)
	var z ztunnel.Config
	z.RegisterCaptureFlags(fs)
	if err := fs.Parse(args); err != nil {
		return redirect.Config{}, err
	}
	return redirect.Config{PinPath: z.BPFPinPath, Mark: z.Mark, MarkMask: z.MarkMask, RouteTable: z.RouteTable, Uplinks: z.Uplinks}, nil
}
