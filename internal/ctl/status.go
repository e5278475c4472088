package ctl

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ambitmesh/ambit/ztunnel"
)

func status(args []string, stdout io.Writer, raw bool) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	admin := adminFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if raw {
		body, err := adminGet(*admin, "/config_dump")
		if err != nil {
			return err
		}
		_, err = stdout.Write(body)
		return err
	}
	d, err := configDump(*admin)
	if err != nil {
		return err
	}
	printStatus(stdout, d)
	return nil
}

// adminGet fetches pathQuery from a ztunnel admin endpoint; an answer other than
// 200 is an error carrying its text.
func adminGet(admin, pathQuery string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+pathQuery, nil)
	if err != nil {
		return nil, fmt.Errorf("-admin %q: %w", admin, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query ztunnel admin %s: %w", admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read ztunnel admin %s: %w", admin, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		if msg == "" || len(msg) > 500 {
			return nil, fmt.Errorf("query ztunnel admin %s: %s", admin, resp.Status)
		}
		return nil, fmt.Errorf("query ztunnel admin %s: %s: %s", admin, resp.Status, msg)
	}
	return body, nil
}

// configDump fetches and decodes /config_dump.
func configDump(admin string) (*ztunnel.ConfigDump, error) {
	body, err := adminGet(admin, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d ztunnel.ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	return &d, nil
}

// adminFlag registers -admin, the ztunnel admin address.
func adminFlag(fs *flag.FlagSet) *string {
	return fs.String("admin", fmt.Sprintf("127.0.0.1:%d", ztunnel.PortAdmin), "ztunnel admin address")
}

// printStatus renders a config dump for people.
func printStatus(w io.Writer, d *ztunnel.ConfigDump) {
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
