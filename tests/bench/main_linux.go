// Command bench is `make bench`: it measures Ambit's data path (enrolled pods, a ztunnel on
// each node) against baselines on the same netns topology in the same run: direct TCP, a
// socat pair, ghostunnel, stunnel and Istio's Go HBONE package, with iperf3 throughput,
// fortio latency, a connection-rate loop and idle-connection memory. See
// docs/performance.md.
//
//	go run ./tests/bench [-smoke] [-json out.json] [-svg out.svg]   (as root)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

func main() {
	netns.EnterPrivateAsRoot("bench", "network namespaces, eBPF", "sudo make bench")
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// config is the run as the flags shape it.
type config struct {
	Smoke                         bool
	Reps                          int
	Stream, Lat200, Lat1000, Conn time.Duration
	L7Max, L7Rate                 time.Duration // the L7 case's max-rate and fixed-rate runs
	IdleConns                     int
	Paths                         []string
	Hops                          []string // the L7 case's hops, in allHops order
	Bin, Tools                    string
	JSON, SVG, Markdown, FromJSON string
	Profile                       string   // directory for ztunnel CPU profiles
	Tests                         []string // tests to run, in allTests order
	ZtunnelArgs                   []string
	WaypointArgs                  []string
}

// allPaths in the order they are reported. A full run measures fullPaths by default:
// go-relay, the floor of a user-space relay in Go, would take it past its 15 minutes
// and is there for A/B runs (-paths). A smoke run measures all, so CI keeps each working.
var (
	allPaths  = []string{"direct", "socat", "go-relay", "ghostunnel", "stunnel", "istio-hbone", "ambit", PathPolicy}
	fullPaths = []string{"direct", "socat", "ghostunnel", "stunnel", "istio-hbone", "ambit", PathPolicy}
)

// allTests in the order each repetition runs them (the idle-connection test runs once, first).
// The L7 case (TestL7) runs after them, over its own hops (-l7-hops).
var allTests = []string{TestIdle, TestStream1, TestStream8, TestLat200, TestLat1000, TestConnRate, TestL7}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var c config
	var paths, tests, ztArgs, wpArgs, hops string
	fs.BoolVar(&c.Smoke, "smoke", false, "one short repetition per path (CI)")
	fs.IntVar(&c.Reps, "reps", 0, "repetitions (default 3, smoke 1)")
	fs.StringVar(&paths, "paths", "", "comma-separated paths to measure (default: all but go-relay, all with -smoke; known: "+strings.Join(allPaths, ", ")+")")
	fs.StringVar(&tests, "tests", strings.Join(allTests, ","), "comma-separated tests to run (A/B comparisons of one figure)")
	fs.IntVar(&c.IdleConns, "idle-conns", 0, "idle connections held for the memory figure (default 10000, smoke 200)")
	fs.StringVar(&c.Bin, "bin", "", "directory with ztunnel and ambit-ca (built if empty)")
	cache := os.Getenv("AMBIT_TOOLS_CACHE")
	if cache == "" {
		cache = "/var/cache/ambit-tools"
	}
	fs.StringVar(&c.Tools, "tools", filepath.Join(cache, "v1"), "directory with fortio, ghostunnel and istio-hbone (tests/tools/build.sh)")
	fs.StringVar(&c.JSON, "json", "", "write the report as JSON to this file")
	fs.StringVar(&c.SVG, "svg", "", "write bar charts as SVG to this file")
	fs.StringVar(&c.Markdown, "md", "", "write the result tables as Markdown to this file")
	fs.StringVar(&c.FromJSON, "from-json", "", "measure nothing: render the report in this JSON file again")
	fs.StringVar(&c.Profile, "profile", "", "save CPU profiles of both ztunnels during Ambit's single-stream and connection-rate runs to this directory")
	fs.StringVar(&ztArgs, "ztunnel-args", "", "extra ztunnel arguments, space-separated (e.g. -log-level=warn)")
	fs.StringVar(&wpArgs, "waypoint-args", "", "extra waypoint arguments of the L7 case, space-separated")
	fs.StringVar(&hops, "l7-hops", strings.Join(allHops, ","), "comma-separated hops of the L7 case (known: "+strings.Join(allHops, ", ")+")")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if paths == "" {
		paths = strings.Join(fullPaths, ",")
		if c.Smoke {
			paths = strings.Join(allPaths, ",")
		}
	}
	if c.Smoke {
		c.Stream, c.Lat200, c.Lat1000, c.Conn = 2*time.Second, 2*time.Second, 2*time.Second, time.Second
		c.L7Max, c.L7Rate = 2*time.Second, 2*time.Second
		if c.Reps == 0 {
			c.Reps = 1
		}
		if c.IdleConns == 0 {
			c.IdleConns = 200
		}
	} else {
		c.Stream, c.Lat200, c.Lat1000, c.Conn = 6*time.Second, 10*time.Second, 6*time.Second, 4*time.Second
		c.L7Max, c.L7Rate = 5*time.Second, 6*time.Second
		if c.Reps == 0 {
			c.Reps = 3
		}
		if c.IdleConns == 0 {
			c.IdleConns = 10000
		}
	}
	if c.Reps < 1 {
		return c, fmt.Errorf("-reps %d: want at least 1", c.Reps)
	}
	if c.IdleConns < 1 {
		return c, fmt.Errorf("-idle-conns %d: want at least 1", c.IdleConns)
	}
	var err error
	if c.Paths, err = selectKnown("paths", "path", paths, allPaths); err != nil {
		return c, err
	}
	if c.Tests, err = selectKnown("tests", "test", tests, allTests); err != nil {
		return c, err
	}
	if c.Hops, err = selectKnown("l7-hops", "hop", hops, allHops); err != nil {
		return c, err
	}
	c.ZtunnelArgs, c.WaypointArgs = strings.Fields(ztArgs), strings.Fields(wpArgs)
	for _, d := range []*string{&c.Bin, &c.Tools, &c.Profile} {
		if *d != "" {
			abs, err := filepath.Abs(*d)
			if err != nil {
				return c, err
			}
			*d = abs
		}
	}
	return c, nil
}

// l4 reports whether any test of the L4 paths is selected (not only the L7 case).
func (c config) l4() bool {
	for _, t := range c.Tests {
		if t != TestL7 {
			return true
		}
	}
	return false
}

// selectKnown parses a comma-separated flag value into the named members of known, in
// known's order (the report's order whatever the flag order).
func selectKnown(flagName, what, value string, known []string) ([]string, error) {
	var picked []string
	for _, v := range strings.Split(value, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if !contains(known, v) {
			return nil, fmt.Errorf("-%s: unknown %s %q (known: %s)", flagName, what, v, strings.Join(known, ", "))
		}
		picked = append(picked, v)
	}
	var ordered []string
	for _, k := range known {
		if contains(picked, k) {
			ordered = append(ordered, k)
		}
	}
	if len(ordered) == 0 {
		return nil, fmt.Errorf("-%s: no %s selected", flagName, what)
	}
	return ordered, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// run returns the exit code: 1 when a path could not be measured.
func run(args []string) (int, error) {
	cfg, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil
		}
		return 2, err
	}
	var rep *Report
	if cfg.FromJSON != "" {
		if rep, err = ReadReport(cfg.FromJSON); err != nil {
			return 1, err
		}
	} else {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		b, err := newBench(cfg)
		if err != nil {
			return 1, err
		}
		defer b.Close()
		if rep, err = b.Run(ctx); err != nil {
			return 1, err
		}
	}
	rep.WriteTable(os.Stdout)
	if cfg.JSON != "" {
		if err := rep.WriteJSON(cfg.JSON); err != nil {
			return 1, err
		}
		fmt.Printf("\nJSON written to %s\n", cfg.JSON)
	}
	if cfg.SVG != "" {
		if err := rep.WriteSVG(cfg.SVG); err != nil {
			return 1, err
		}
		fmt.Printf("SVG written to %s\n", cfg.SVG)
	}
	if cfg.Markdown != "" {
		if err := rep.WriteMarkdown(cfg.Markdown); err != nil {
			return 1, err
		}
		fmt.Printf("Markdown written to %s\n", cfg.Markdown)
	}
	if n := rep.failures(); n > 0 {
		return 1, fmt.Errorf("%d measurement(s) failed or a path could not be set up (see above)", n)
	}
	return 0, nil
}
