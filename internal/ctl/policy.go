package ctl

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/ambitmesh/ambit/ztunnel"
)

const policyUsage = "usage: ambitctl policy explain -from SRC -to DST:PORT [-plaintext] [-json] [-admin ADDR]\n" +
	"       ambitctl policy list [-admin ADDR] [WORKLOAD]"

func policyCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New(policyUsage)
	}
	switch args[0] {
	case "explain":
		return explain(args[1:], stdout)
	case "list":
		return listPolicies(args[1:], stdout)
	}
	return fmt.Errorf("unknown policy command %q\n%s", args[0], policyUsage)
}

func explain(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("policy explain", flag.ContinueOnError)
	admin := adminFlag(fs)
	from := fs.String("from", "", "source: a workload IP, namespace/name, or an address outside the mesh")
	to := fs.String("to", "", "destination on the queried node: IP:port or namespace/name:port")
	plaintext := fs.Bool("plaintext", false, "ask about plaintext from a mesh source (default: HBONE from mesh sources)")
	raw := fs.Bool("json", false, "print the node's JSON answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || *to == "" || fs.NArg() != 0 {
		return errors.New(policyUsage)
	}
	q := url.Values{"src": {*from}, "dst": {*to}}
	if *plaintext {
		q.Set("plaintext", "true")
	}
	body, err := adminGet(*admin, "/policy/explain?"+q.Encode())
	if err != nil {
		return err
	}
	if *raw {
		_, err = stdout.Write(body)
		return err
	}
	var e ztunnel.Explanation
	if err := json.Unmarshal(body, &e); err != nil {
		return fmt.Errorf("decode explanation: %w", err)
	}
	printExplanation(stdout, &e)
	return nil
}

// verdict is a decision for people: "DENY by AuthorizationPolicy mesh/deny-all
// rule 0", "ALLOW: no ALLOW policy applies".
func verdict(d *ztunnel.DecisionInfo) string {
	v := "DENY"
	if d.Allow {
		v = "ALLOW"
	}
	switch {
	case d.Policy == "":
		return v + ": " + d.Reason
	case d.Rule >= 0:
		return fmt.Sprintf("%s by %s %s rule %d", v, d.Kind, d.Policy, d.Rule)
	case d.Reason != "":
		return fmt.Sprintf("%s by %s %s: %s", v, d.Kind, d.Policy, d.Reason)
	}
	return fmt.Sprintf("%s by %s %s", v, d.Kind, d.Policy)
}

func printExplanation(w io.Writer, e *ztunnel.Explanation) {
	switch {
	case e.Refused != "":
		fmt.Fprintf(w, "REFUSED before policy: %s\n", e.Refused)
	case e.Decision != nil:
		fmt.Fprintln(w, verdict(e.Decision))
	case e.Allowed:
		fmt.Fprintln(w, "ALLOW (no policy decision)")
	default:
		fmt.Fprintln(w, "DENY")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	from := e.Src + " (outside the mesh)"
	if e.SrcWorkload != "" {
		from = e.SrcWorkload + " " + e.Src
	}
	principal := "none (plaintext)"
	if e.Principal != "" {
		principal = e.Principal
	}
	fmt.Fprintf(tw, "  from\t%s\n", from)
	fmt.Fprintf(tw, "  principal\t%s\n", principal)
	fmt.Fprintf(tw, "  to\t%s %s\n", e.DstWorkload, e.Dst)
	fmt.Fprintf(tw, "  path\t%s (%s)\n", e.Path, e.Security)
	by := "Istio's default"
	if e.MTLSModeBy != "" {
		by = "PeerAuthentication " + e.MTLSModeBy
	}
	fmt.Fprintf(tw, "  mTLS\t%s (%s)\n", e.MTLSMode, by)
	if d := e.Decision; d != nil {
		if d.DryRun != nil {
			fmt.Fprintf(tw, "  dry run\t%s\n", verdict(d.DryRun))
		}
		if len(d.Audit) > 0 {
			fmt.Fprintf(tw, "  audit\t%s\n", strings.Join(d.Audit, ", "))
		}
	}
	policies := "none"
	if len(e.Policies) > 0 {
		policies = strings.Join(e.Policies, ", ")
	}
	fmt.Fprintf(tw, "  policies\t%s\n", policies)
	tw.Flush()
}

func listPolicies(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("policy list", flag.ContinueOnError)
	admin := adminFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return errors.New(policyUsage)
	}
	d, err := configDump(*admin)
	if err != nil {
		return err
	}
	return printPolicies(stdout, d, fs.Arg(0))
}

// printPolicies renders, per local workload (those that match filter: its
// namespace/name, name or IP), the policies in force.
func printPolicies(w io.Writer, d *ztunnel.ConfigDump, filter string) error {
	byRef := map[string]*ztunnel.DumpPolicy{}
	for i := range d.Policies {
		p := &d.Policies[i]
		byRef[p.Kind+" "+p.Name] = p
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tKIND\tPOLICY\tSCOPE\tACTION\tMODE\tNOTES")
	listed := 0
	for _, wl := range d.Workloads {
		ref := wl.Namespace + "/" + wl.Name
		if filter != "" && filter != ref && filter != wl.Name && !slices.Contains(wl.IPs, filter) {
			continue
		}
		if !wl.Local {
			if filter != "" {
				return fmt.Errorf("%s runs on node %q, not %q: ask that node's ztunnel", ref, wl.Node, d.Node)
			}
			continue
		}
		listed++
		if len(wl.Policies) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\tno policy: allowed, mTLS PERMISSIVE\n", ref)
		}
		for _, applied := range wl.Policies {
			kind, name, _ := strings.Cut(applied, " ")
			p := byRef[applied]
			if p == nil {
				p = &ztunnel.DumpPolicy{Kind: kind, Name: name}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ref, p.Kind, p.Name, dash(p.Scope), dash(p.Action), dash(policyMode(p)), policyNotes(p))
		}
	}
	if filter != "" && listed == 0 {
		return fmt.Errorf("no workload %q on node %q", filter, d.Node)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// policyMode is a PeerAuthentication's mode and its port-level overrides.
func policyMode(p *ztunnel.DumpPolicy) string {
	if len(p.Ports) == 0 {
		return p.Mode
	}
	ports := make([]uint16, 0, len(p.Ports))
	for port := range p.Ports {
		ports = append(ports, port)
	}
	slices.Sort(ports)
	levels := make([]string, len(ports))
	for i, port := range ports {
		levels[i] = fmt.Sprintf("%d=%s", port, p.Ports[port])
	}
	return p.Mode + " (" + strings.Join(levels, ",") + ")"
}

func policyNotes(p *ztunnel.DumpPolicy) string {
	var notes []string
	if p.DryRun {
		notes = append(notes, "dry run")
	}
	if p.Invalid != "" {
		notes = append(notes, "invalid: "+p.Invalid)
	}
	for _, w := range p.Warnings {
		notes = append(notes, "warning: "+w)
	}
	return strings.Join(notes, "; ")
}
