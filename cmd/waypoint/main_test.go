package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/identity/spire"
	"github.com/ambitmesh/ambit/waypoint"
)

// parse registers and parses the flags of main and wires the sources.
func parse(args ...string) (waypoint.Deps, error) {
	var (
		cfg waypoint.Config
		src sources
	)
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	src.registerFlags(fs)
	if err := fs.Parse(args); err != nil {
		return waypoint.Deps{}, err
	}
	var deps waypoint.Deps
	return deps, src.wire(&deps, cfg)
}

func TestIdentityFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		spire   bool
		wantErr string
	}{
		{name: "default built-in CA", args: nil},
		{name: "ca", args: []string{"-identity", "ca"}},
		{name: "spire default socket", args: []string{"-identity", "spire"}, spire: true},
		{name: "spire socket", args: []string{"-identity=spire", "-spire-workload-socket=unix:///run/agent.sock"}, spire: true},
		{name: "unknown source", args: []string{"-identity", "vault"}, wantErr: `-identity "vault": want "ca" or "spire"`},
		{name: "relative socket", args: []string{"-identity", "spire", "-spire-workload-socket", "run/agent.sock"}, wantErr: "-spire-workload-socket"},
		{name: "empty socket", args: []string{"-identity", "spire", "-spire-workload-socket="}, wantErr: "workload socket: not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deps, err := parse(tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := deps.Identity.(*spire.OwnSource); ok != tt.spire {
				t.Errorf("identity %T, want SPIRE %v", deps.Identity, tt.spire)
			}
			if !tt.spire && deps.Identity != nil {
				t.Errorf("identity %T, want the built-in CA (nil)", deps.Identity)
			}
		})
	}
}

func TestFlagDefaults(t *testing.T) {
	var src sources
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	src.registerFlags(fs)
	for name, want := range map[string]string{
		"kube": "false", "kubeconfig": "", "identity": "ca",
		"spire-workload-socket": "unix:///run/spire/agent/public/api.sock", // as ztunnel's
	} {
		if f := fs.Lookup(name); f == nil || f.DefValue != want {
			t.Errorf("-%s: %v, want default %q", name, f, want)
		}
	}
}
