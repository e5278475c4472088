package main

import (
	"flag"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/daemon"
	"github.com/ambitmesh/ambit/ztunnel"
)

// Every flag ztunnel has had, with its default as -help shows it. The Helm chart, the
// test harness and operators' scripts pass these; a name must not disappear.
func TestFlagNames(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	var (
		cfg  ztunnel.Config
		proc daemon.Config
		src  sources
	)
	got := map[string]string{}
	flags(&cfg, &proc, &src).VisitAll(func(f *flag.Flag) { got[f.Name] = f.DefValue })
	want := map[string]string{
		"node": "", "trust-domain": "cluster.local", "model": "", "policies": "", "root-namespace": "istio-system", "kube": "false", "kubeconfig": "", "waypoint-class": "istio-waypoint",
		"enroll-namespace-label": "istio.io/dataplane-mode=ambient", "opt-out-pod-label": "istio.io/dataplane-mode=none",
		"identity": "ca", "spire-workload-socket": "unix:///run/spire/agent/public/api.sock",
		"spire-admin-socket": "unix:///run/spire/agent/admin/admin.sock", "spire-selectors": "k8s:ns:{ns},k8s:sa:{sa}",
		"ca-addr": "", "ca-token-file": "", "ca-root-file": "",
		"uplinks": "eth0", "bpf-pin-path": "/sys/fs/bpf/ambit", "mark": "0x400", "mark-mask": "0xf00", "route-table": "133",
		"outbound-addr": "127.0.0.1:15001", "inbound-addr": "127.0.0.1:15006", "hbone-addr": "127.0.0.1:15008",
		"readiness-addr": ":15021", "metrics-addr": ":15020", "admin-addr": "127.0.0.1:15000",
		"hbone-conns-per-peer": "4", "hbone-pool-idle-timeout": "1m0s", "drain-timeout": "5s",
		"datapath": "fast", "max-streams-per-peer": "32768", "max-upstreams-per-peer": "32768", "waypoint-bypass-check": "true", "gomaxprocs": "auto",
		"connect-timeout": "5s", "connect-attempts": "3", "endpoint-backoff": "1s", "endpoint-backoff-max": "30s", "log-json": "false", "log-level": "INFO", "log-flush-interval": "100ms",
	}
	if !maps.Equal(got, want) {
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if got[k] != want[k] {
				t.Errorf("-%s: default %q, want %q", k, got[k], want[k])
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("-%s: new flag (add it here and to docs/operations.md)", k)
			}
		}
	}
}

func TestFlagsParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(ztunnel.Config, daemon.Config, sources) bool
		wantErr string
	}{
		{
			name: "helm chart",
			args: []string{"-kube", "-trust-domain=cluster.local", "-enroll-namespace-label=istio.io/dataplane-mode=ambient",
				"-opt-out-pod-label=istio.io/dataplane-mode=none", "-ca-addr=ambit-ca.ambit-system.svc:15012",
				"-ca-token-file=/var/run/secrets/ambit/token", "-ca-root-file=/var/run/ambit/ca/root.pem", "-uplinks=eth0",
				"-bpf-pin-path=/sys/fs/bpf/ambit", "-mark=0x400", "-mark-mask=0xf00", "-route-table=133", "-metrics-addr=:15020",
				"-readiness-addr=:15021", "-drain-timeout=5s", "-hbone-conns-per-peer=4", "-hbone-pool-idle-timeout=60s",
				"-gomaxprocs=auto", "-datapath=fast", "-max-streams-per-peer=32768", "-max-upstreams-per-peer=32768", "-log-level=info", "-log-json=false"},
			check: func(c ztunnel.Config, p daemon.Config, s sources) bool {
				return s.kube && c.CAAddr == "ambit-ca.ambit-system.svc:15012" && c.HBONEPoolIdleTimeout == time.Minute &&
					p.GOMAXPROCS == daemon.ProcsAuto && p.LogLevel == slog.LevelInfo && !p.LogJSON
			},
		},
		{
			name: "test harness",
			args: []string{"-node", "node1", "-trust-domain", "cluster.local", "-uplinks", "veth-up", "-bpf-pin-path", "/sys/fs/bpf/t/node1",
				"-drain-timeout", "1s", "-model", "/tmp/mesh.yaml", "-identity", "spire", "-spire-workload-socket", "unix:///w.sock",
				"-spire-admin-socket", "unix:///a.sock", "-gomaxprocs=runtime", "-log-flush-interval=0"},
			check: func(c ztunnel.Config, p daemon.Config, s sources) bool {
				return c.NodeName == "node1" && slices.Equal(c.Uplinks, []string{"veth-up"}) && c.DrainTimeout == time.Second &&
					s.identity == "spire" && s.adminSocket == "unix:///a.sock" && p.GOMAXPROCS == daemon.ProcsRuntime && p.LogFlushInterval == 0
			},
		},
		{
			name: "selectors",
			args: []string{"-spire-selectors", "k8s:ns:{ns}, k8s:sa:{sa} ,k8s:pod-label:app:x"},
			check: func(_ ztunnel.Config, _ daemon.Config, s sources) bool {
				return len(s.selectors) == 3 && s.selectors[1] == "k8s:sa:{sa}"
			},
		},
		{name: "bad gomaxprocs", args: []string{"-gomaxprocs=0"}, wantErr: `-gomaxprocs: want "auto", "runtime" or a number >= 1`},
		{name: "bad log level", args: []string{"-log-level=chatty"}, wantErr: "-log-level"},
		{name: "bad label", args: []string{"-enroll-namespace-label=x"}, wantErr: "want key=value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				cfg  ztunnel.Config
				proc daemon.Config
				src  sources
			)
			fs := flags(&cfg, &proc, &src)
			fs.SetOutput(io.Discard)
			err := fs.Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(cfg, proc, src) {
				t.Fatalf("parsed %+v %+v %+v", cfg, proc, src)
			}
		})
	}
}

func TestWireErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     sources
		cfg     ztunnel.Config
		wantErr string
	}{
		{"no model", sources{identity: "ca"}, ztunnel.Config{}, "-model or -kube is required"},
		{"unknown identity", sources{identity: "vault"}, ztunnel.Config{ModelPath: "/m.yaml"}, `-identity "vault": want "ca" or "spire"`},
		{"spire with a bad trust domain", sources{identity: "spire"}, ztunnel.Config{ModelPath: "/m.yaml", TrustDomain: "Bad Domain"}, `-trust-domain "Bad Domain"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deps := ztunnel.Deps{Logger: slog.New(slog.DiscardHandler)}
			if err := tt.src.wire(&deps, tt.cfg); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	deps := ztunnel.Deps{}
	if err := (&sources{identity: "ca"}).wire(&deps, ztunnel.Config{ModelPath: "/m.yaml"}); err != nil || deps.Identity != nil || deps.Store != nil {
		t.Fatalf("model file and built-in CA: %v, %+v; want ztunnel's defaults", err, deps)
	}
}
