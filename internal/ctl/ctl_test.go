package ctl

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/redirect"
	"github.com/ambitmesh/ambit/ztunnel"
)

// admin is a fake ztunnel admin endpoint answering /config_dump with code and body.
func admin(tb testing.TB, code int, body string) string {
	tb.Helper()
	return fakeAdmin(tb, map[string]http.HandlerFunc{"/config_dump": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		w.Write([]byte(body))
	}})
}

// fakeAdmin serves handlers by path and returns its address.
func fakeAdmin(tb testing.TB, handlers map[string]http.HandlerFunc) string {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, ok := handlers[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	tb.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestCommands(t *testing.T) {
	dump, err := json.Marshal(ztunnel.ConfigDump{
		Node: "node1", TrustDomain: "cluster.local", Ready: "ok", ModelVersion: 3,
		Certificates: []identity.CertInfo{{ID: "spiffe://cluster.local/ns/default/sa/client", Serial: "1f", NotAfter: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), State: "current"}},
		Captured:     map[string]int{"198.18.1.10": 7},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The dump's workload list, as ztunnel renders it.
	dump = []byte(strings.Replace(string(dump), `"workloads":null`,
		`"workloads":[{"uid":"default/client","name":"client","namespace":"default","serviceAccount":"client","node":"node1","ips":["198.18.1.10"],"protocol":"HBONE","local":true}]`, 1))
	ok := admin(t, 200, string(dump))
	broken := admin(t, 500, "boom")
	runCommands(t, []cmdCase{
		{name: "no command", code: 2, stderr: "usage: ambitctl"},
		{name: "help", args: []string{"help"}, code: 0, stdout: []string{"commands:"}},
		{name: "unknown", args: []string{"frobnicate"}, code: 2, stderr: `unknown command "frobnicate"`},
		{name: "status", args: []string{"status", "-admin", ok}, code: 0, stdout: []string{
			"node node1 (trust domain cluster.local), ready: ok, model version 3",
			"default/client", "HBONE", "yes", "spiffe://cluster.local/ns/default/sa/client  1f", "2030-01-01T00:00:00Z", "CONNECTION"}},
		{name: "dump", args: []string{"dump", "-admin=" + ok}, code: 0, exactStdout: string(dump)},
		{name: "admin error", args: []string{"status", "-admin", broken}, code: 1, stderr: "500"},
		{name: "admin down", args: []string{"status", "-admin", "127.0.0.1:1"}, code: 1, stderr: "query ztunnel admin 127.0.0.1:1"},
		{name: "not json", args: []string{"status", "-admin", admin(t, 200, "<html>")}, code: 1, stderr: "decode config dump"},
		{name: "verify without marker", args: []string{"verify", "x.pcap"}, code: 1, stderr: "usage: ambitctl verify"},
		{name: "verify missing file", args: []string{"verify", "-marker", "m", "/nonexistent.pcap"}, code: 1, stderr: "nonexistent.pcap"},
		{name: "bad flag", args: []string{"teardown", "-mark=x"}, code: 1, stderr: "-mark: parse error"},
	})
}

// cmdCase is one command line, its exit status and what it prints: stdout contains
// each of stdout (or is exactStdout), stderr contains stderr.
type cmdCase struct {
	name        string
	args        []string
	code        int
	stdout      []string
	stderr      string
	exactStdout string
}

func runCommands(t *testing.T, tests []cmdCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := Main(tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %s", code, tt.code, stderr.String())
			}
			for _, want := range tt.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			if tt.exactStdout != "" && stdout.String() != tt.exactStdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.exactStdout)
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q, want %q", stderr.String(), tt.stderr)
			}
		})
	}
}

// teardown names what ztunnel installed with ztunnel's flags and defaults.
func TestTeardownConfig(t *testing.T) {
	tests := []struct {
		args []string
		want redirect.Config
	}{
		{nil, redirect.Config{PinPath: redirect.DefaultPinPath, Mark: redirect.DefaultMark, MarkMask: redirect.DefaultMarkMask,
			RouteTable: redirect.DefaultRouteTable, Uplinks: []string{"eth0"}}},
		{[]string{"-bpf-pin-path=/sys/fs/bpf/n1", "-mark=0x10000", "-mark-mask=0xf0000", "-route-table=200", "-uplinks=eth1,eth2"},
			redirect.Config{PinPath: "/sys/fs/bpf/n1", Mark: 0x10000, MarkMask: 0xf0000, RouteTable: 200, Uplinks: []string{"eth1", "eth2"}}},
	}
	for _, tt := range tests {
		got, err := teardownConfig(tt.args)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("teardown %v: %+v, want %+v", tt.args, got, tt.want)
		}
	}
}
