package ztunnel

import (
	"errors"
	"flag"
	"io"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/internal/serve"
	"github.com/ambitmesh/ambit/redirect"
)

func parseConfigFlags(tb testing.TB, args ...string) (Config, error) {
	tb.Helper()
	var c Config
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	return c, fs.Parse(args)
}

// Without flags, a Config is its defaults (WithDefaults), plus what only the command
// defaults: the node from $NODE_NAME and the eth0 uplink.
func TestRegisterFlagsDefaults(t *testing.T) {
	t.Setenv("NODE_NAME", "node7")
	c, err := parseConfigFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NodeName: "node7", Uplinks: []string{"eth0"}}.WithDefaults()
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("flag defaults\n got %+v\nwant %+v", c, want)
	}
	// The values each default is written as, once: redirect's, serve's, discovery's.
	lo := netip.MustParseAddr("127.0.0.1")
	if c.BPFPinPath != redirect.DefaultPinPath || c.Mark != redirect.DefaultMark || c.MarkMask != redirect.DefaultMarkMask ||
		c.RouteTable != redirect.DefaultRouteTable ||
		c.OutboundAddr != netip.AddrPortFrom(lo, redirect.DefaultOutboundPort) ||
		c.InboundAddr != netip.AddrPortFrom(lo, redirect.DefaultInboundPort) ||
		c.HBONEAddr != netip.AddrPortFrom(lo, redirect.DefaultHBONEPort) ||
		c.HTTP != (serve.Config{}).WithDefaults() ||
		c.Enrollment != (discovery.EnrollmentOptions{}).WithDefaults() {
		t.Fatalf("defaults differ from their owners': %+v", c)
	}
}

// The flags and defaults ztunnel has always had (the Helm chart and the test harness
// pass them): names must not change, nor effective defaults.
func TestRegisterFlagsNames(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	var c Config
	c.RegisterFlags(fs)
	want := map[string]string{
		"node":                    "",
		"trust-domain":            "cluster.local",
		"model":                   "",
		"policies":                "",
		"root-namespace":          "istio-system",
		"enroll-namespace-label":  "istio.io/dataplane-mode=ambient",
		"opt-out-pod-label":       "istio.io/dataplane-mode=none",
		"ca-addr":                 "",
		"ca-token-file":           "",
		"ca-root-file":            "",
		"uplinks":                 "eth0",
		"bpf-pin-path":            "/sys/fs/bpf/ambit",
		"mark":                    "0x400",
		"mark-mask":               "0xf00",
		"route-table":             "133",
		"outbound-addr":           "127.0.0.1:15001",
		"inbound-addr":            "127.0.0.1:15006",
		"hbone-addr":              "127.0.0.1:15008",
		"readiness-addr":          ":15021",
		"metrics-addr":            ":15020",
		"admin-addr":              "127.0.0.1:15000",
		"hbone-conns-per-peer":    "4",
		"hbone-pool-idle-timeout": "1m0s",
		"drain-timeout":           "5s",
		"datapath":                "fast",
		"max-streams-per-peer":    "32768",
		"max-upstreams-per-peer":  "32768",
		"waypoint-bypass-check":   "true",
		"connect-timeout":         "5s",
		"connect-attempts":        "3",
		"endpoint-backoff":        "1s",
		"endpoint-backoff-max":    "30s",
	}
	got := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { got[f.Name] = f.DefValue })
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("flags\n got %v\nwant %v", got, want)
	}
}

func TestRegisterFlagsParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(Config) bool
		wantErr string
	}{
		{name: "chart's capture flags", args: []string{"-uplinks=eth0,eth1", "-mark=0x10000", "-mark-mask=0xf0000", "-route-table=200", "-bpf-pin-path=/sys/fs/bpf/x"},
			check: func(c Config) bool {
				return slices.Equal(c.Uplinks, []string{"eth0", "eth1"}) && c.Mark == 0x10000 && c.MarkMask == 0xf0000 && c.RouteTable == 200 && c.BPFPinPath == "/sys/fs/bpf/x"
			}},
		{name: "decimal mark", args: []string{"-mark", "1024"}, check: func(c Config) bool { return c.Mark == 0x400 }},
		{name: "labels", args: []string{"-enroll-namespace-label=mesh.example/on=yes", "-opt-out-pod-label=mesh.example/off=true"},
			check: func(c Config) bool {
				return c.Enrollment == discovery.EnrollmentOptions{NamespaceLabel: "mesh.example/on", EnrollValue: "yes", PodLabel: "mesh.example/off", OptOutValue: "true"}
			}},
		{name: "listeners", args: []string{"-outbound-addr=127.0.0.2:16001", "-hbone-addr", "127.0.0.1:16008"},
			check: func(c Config) bool {
				return c.OutboundAddr == netip.MustParseAddrPort("127.0.0.2:16001") && c.HBONEAddr == netip.MustParseAddrPort("127.0.0.1:16008")
			}},
		{name: "endpoints off", args: []string{"-metrics-addr=off", "-readiness-addr=off", "-admin-addr=off"},
			check: func(c Config) bool {
				return c.HTTP == serve.Config{ReadinessAddr: "off", MetricsAddr: "off", AdminAddr: "off"}
			}},
		{name: "durations", args: []string{"-drain-timeout=1s", "-hbone-pool-idle-timeout=30s", "-hbone-conns-per-peer=8"},
			check: func(c Config) bool {
				return c.DrainTimeout == time.Second && c.HBONEPoolIdleTimeout == 30*time.Second && c.HBONEConnsPerPeer == 8
			}},
		{name: "connect retries", args: []string{"-connect-timeout=2s", "-connect-attempts=5", "-endpoint-backoff=500ms", "-endpoint-backoff-max=1m"},
			check: func(c Config) bool {
				return c.ConnectTimeout == 2*time.Second && c.ConnectAttempts == 5 && c.EndpointBackoff == 500*time.Millisecond && c.EndpointBackoffMax == time.Minute
			}},
		{name: "waypoint bypass check on", args: []string{"-waypoint-bypass-check"}, check: func(c Config) bool { return !c.AllowWaypointBypass }},
		{name: "waypoint bypass check off", args: []string{"-waypoint-bypass-check=false"}, check: func(c Config) bool { return c.AllowWaypointBypass }},
		{name: "bad waypoint bypass check", args: []string{"-waypoint-bypass-check=maybe"}, wantErr: `invalid boolean value "maybe" for -waypoint-bypass-check`},
		{name: "std data path", args: []string{"-datapath=std"}, check: func(c Config) bool { return c.DataPath == DataPathStd }},
		{name: "bad data path", args: []string{"-datapath=turbo"}, wantErr: `invalid value "turbo" for flag -datapath: data path "turbo": want fast or std`},
		{name: "no uplinks", args: []string{"-uplinks="}, check: func(c Config) bool { return len(c.Uplinks) == 0 }},
		{name: "bad label", args: []string{"-enroll-namespace-label=ambient"}, wantErr: `invalid value "ambient" for flag -enroll-namespace-label: want key=value`},
		{name: "label without value", args: []string{"-opt-out-pod-label=k="}, wantErr: "-opt-out-pod-label: want key=value"},
		{name: "bad address", args: []string{"-inbound-addr=localhost:15006"}, wantErr: `invalid value "localhost:15006" for flag -inbound-addr`},
		{name: "mark too big", args: []string{"-mark=0x100000000"}, wantErr: "-mark: value out of range"},
		{name: "bad mask", args: []string{"-mark-mask=f00"}, wantErr: "-mark-mask: parse error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfigFlags(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("parsed %+v", c)
			}
		})
	}
}

// Values set before RegisterFlags are the defaults the flags show and keep.
func TestRegisterFlagsKeepsSetValues(t *testing.T) {
	c := Config{NodeName: "n1", Mark: 0x10000, MarkMask: 0xf0000, Uplinks: []string{"ens5"}, DrainTimeout: time.Second}
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "n1" || c.Mark != 0x10000 || c.MarkMask != 0xf0000 || !slices.Equal(c.Uplinks, []string{"ens5"}) || c.DrainTimeout != time.Second {
		t.Fatalf("preset values lost: %+v", c)
	}
	if d := fs.Lookup("mark").DefValue; d != "0x10000" {
		t.Fatalf("-mark default shown as %q", d)
	}
}

// ambitctl teardown takes the capture flags under the same names and defaults.
func TestRegisterCaptureFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("teardown", flag.ContinueOnError)
	c.RegisterCaptureFlags(fs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if want := []string{"bpf-pin-path", "mark", "mark-mask", "route-table", "uplinks"}; !slices.Equal(names, want) {
		t.Fatalf("capture flags %v, want %v", names, want)
	}
	full := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	var z Config
	z.RegisterFlags(full)
	for _, n := range names {
		if a, b := fs.Lookup(n), full.Lookup(n); a.DefValue != b.DefValue || a.Usage != b.Usage {
			t.Errorf("-%s differs between the capture flags and ztunnel's", n)
		}
	}
}

func TestDataPathImplementations(t *testing.T) {
	tests := []struct {
		dp      DataPath
		records hbone.RecordLayer
		sockets redirect.SocketStack
	}{
		{DataPathFast, hbone.RecordsOwn, redirect.SocketsRaw},
		{DataPathStd, hbone.RecordsCryptoTLS, redirect.SocketsStd},
	}
	for _, tc := range tests {
		if got := tc.dp.records(); got != tc.records {
			t.Errorf("%s: record layer %s, want %s", tc.dp, got, tc.records)
		}
		if got := tc.dp.sockets(); got != tc.sockets {
			t.Errorf("%s: socket stack %s, want %s", tc.dp, got, tc.sockets)
		}
		var back DataPath
		if err := back.UnmarshalText([]byte(tc.dp.String())); err != nil || back != tc.dp {
			t.Errorf("%s: round trip gave %s, %v", tc.dp, back, err)
		}
	}
	if err := (Config{NodeName: "n", DataPath: 7}).WithDefaults().Validate(); err == nil || !errors.Is(err, ErrConfig) {
		t.Errorf("unknown data path: error %v, want ErrConfig", err)
	}
}
