// Command ambitctl inspects and manages an Ambit node.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/redirect"
	"github.com/ambitmesh/ambit/ztunnel"
)

const usage = `usage: ambitctl <command> [flags]

commands:
  status      show a node's workloads, certificates, captured pods and connections
  dump        print a node's raw /config_dump JSON
  verify      check a tcpdump capture of the wire between nodes: only HBONE on :15008,
              TLS 1.3, and a marker string nowhere in clear
  teardown    remove every eBPF program, pin, rule and route ztunnel installed on this node
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "status":
		err = status(os.Args[2:], false)
	case "dump":
		err = status(os.Args[2:], true)
	case "verify":
		err = verify(os.Args[2:])
	case "teardown":
		err = teardown(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "ambitctl: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambitctl:", err)
		os.Exit(1)
	}
}

func status(args []string, raw bool) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	admin := fs.String("admin", fmt.Sprintf("127.0.0.1:%d", ztunnel.PortAdmin), "ztunnel admin address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*admin+"/config_dump", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("query ztunnel admin %s: %w", *admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if raw {
		_, err = os.Stdout.Write(body)
		return err
	}
	var d ztunnel.ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		return fmt.Errorf("decode config dump: %w", err)
	}
	PrintStatus(os.Stdout, &d)
	return nil
}

// PrintStatus renders a config dump for people.
func PrintStatus(w io.Writer, d *ztunnel.ConfigDump) {
	fmt.Fprintf(w, "node %s (trust domain %s), ready: %s, model version %d\n\n", d.Node, d.TrustDomain, d.Ready, d.ModelVersion)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tNODE\tIPS\tPROTOCOL\tIDENTITY\tCAPTURED")
	for _, wl := range d.Workloads {
		captured := ""
		for _, ip := range wl.IPs {
			if _, ok := d.Captured[ip]; ok {
				captured = "yes"
			}
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, wl.Node, strings.Join(wl.IPs, ","), wl.Protocol, wl.Identity, captured)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tSERIAL\tEXPIRES\tSTATE")
	for _, c := range d.Certificates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.ID, c.Serial, c.NotAfter.Format(time.RFC3339), c.State)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTION\tSRC\tDST\tSRC IDENTITY\tDST IDENTITY\tSENT\tRECEIVED")
	for _, c := range d.Connections {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", c.Direction, c.Src, c.Dst, c.SrcIdentity, c.DstIdentity, c.Sent, c.Received)
	}
	tw.Flush()
}

func verify(args []string) error {
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
	fmt.Println(v)
	if !v.Encrypted() {
		return errors.New("the capture does NOT prove the wire is encrypted")
	}
	fmt.Println("verdict: encrypted (HBONE over TLS 1.3 only, marker not in clear)")
	return nil
}

func teardown(args []string) error {
	fs := flag.NewFlagSet("teardown", flag.ContinueOnError)
	var cfg redirect.Config
	var mark, mask uint
	var uplinks string
	fs.StringVar(&cfg.PinPath, "bpf-pin-path", "/sys/fs/bpf/ambit", "bpffs directory ztunnel pinned to")
	fs.UintVar(&mark, "mark", 0x400, "packet mark ztunnel used")
	fs.UintVar(&mask, "mark-mask", 0xf00, "mark mask ztunnel used")
	fs.IntVar(&cfg.RouteTable, "route-table", 133, "routing table ztunnel used")
	fs.StringVar(&uplinks, "uplinks", "eth0", "comma-separated uplink interfaces")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Mark, cfg.MarkMask = uint32(mark), uint32(mask)
	for _, u := range strings.Split(uplinks, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.Uplinks = append(cfg.Uplinks, u)
		}
	}
	if err := redirect.Teardown(cfg); err != nil {
		return err
	}
	fmt.Println("capture removed")
	return nil
}
