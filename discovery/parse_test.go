package discovery

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	for _, tc := range parseErrorCases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("mesh.yaml", []byte(tc.yaml), EnrollmentOptions{})
			if err == nil {
				t.Fatalf("Parse succeeded (%d workloads), want errors:\n%s", len(s.Workloads), strings.Join(tc.want, "\n"))
			}
			if s != nil {
				t.Errorf("Parse returned a snapshot with an error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("errors:\n got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if n := len(FieldErrors(err)); n != len(tc.want) {
				t.Errorf("FieldErrors returned %d errors, want %d", n, len(tc.want))
			}
		})
	}
}

func TestParseExample(t *testing.T) {
	s, err := LoadFile("testdata/mesh.yaml", EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type wl struct {
		uid, sa, node string
		ips           string
		enrolled      bool
		proto         Protocol
	}
	want := map[string]wl{
		"client": {"default/client", "client", "node1", "[198.18.1.10]", true, ProtocolHBONE},
		"echo-1": {"default/echo-1", "echo", "node2", "[198.18.2.10 fd00:198:18:2::10]", true, ProtocolHBONE},
		"echo-2": {"default/echo-2", "echo", "node2", "[198.18.2.11]", false, ProtocolTCP},
		"old":    {"6d1f3c2a-legacy-old", "default", "node1", "[198.18.1.20]", false, ProtocolTCP},
	}
	if len(s.Workloads) != len(want) {
		t.Fatalf("got %d workloads, want %d", len(s.Workloads), len(want))
	}
	for _, w := range s.Workloads {
		got := wl{w.UID, w.ServiceAccount, w.Node, fmt.Sprint(w.IPs), w.Enrolled, w.Protocol}
		if got != want[w.Name] {
			t.Errorf("workload %s = %+v, want %+v", w.Name, got, want[w.Name])
		}
	}

	echo := s.ServiceByName("default", "echo")
	if echo == nil {
		t.Fatal("service default/echo missing")
	}
	if got, want := echo.Hostname, "echo.default.svc.cluster.local"; got != want {
		t.Errorf("hostname = %q, want %q", got, want)
	}
	if got, want := fmt.Sprint(echo.Ports), "[{tcp-echo 80 8080  } {tcp-alt 9090 9090  }]"; got != want {
		t.Errorf("ports = %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(echo.Endpoints), "[{default/echo-1 198.18.2.10} {default/echo-2 198.18.2.11}]"; got != want {
		t.Errorf("echo endpoints = %s, want %s", got, want)
	}
	ext := s.ServiceByHostname("external.example.com")
	if ext == nil {
		t.Fatal("service external.example.com missing")
	}
	if got, want := fmt.Sprint(ext.Endpoints), "[{6d1f3c2a-legacy-old 198.18.1.20} { 198.18.3.1}]"; got != want {
		t.Errorf("external endpoints = %s, want %s", got, want)
	}
	if n := s.NodeByIP(netip.MustParseAddr("fd00:198:18::2")); n == nil || n.Name != "node2" {
		t.Errorf("NodeByIP(fd00:198:18::2) = %v, want node2", n)
	}
	if got, want := echo.TrafficDistribution, TrafficDistributionPreferClose; got != want {
		t.Errorf("echo trafficDistribution = %q, want %q", got, want)
	}
	if got := ext.TrafficDistribution; got != "" {
		t.Errorf("external trafficDistribution = %q, want none", got)
	}
	// Workloads take their node's locality unless they declare their own.
	for uid, want := range map[string]string{
		"default/client":      "us-east/us-east-1a",
		"default/echo-1":      "us-east/us-east-1b/rack-2",
		"6d1f3c2a-legacy-old": "eu-west/eu-west-1a",
	} {
		if got := s.WorkloadByUID(uid).Locality.String(); got != want {
			t.Errorf("workload %s locality = %q, want %q", uid, got, want)
		}
	}
	if got, want := s.Node("node2").Locality, (Locality{Region: "us-east", Zone: "us-east-1b", Subzone: "rack-2"}); got != want {
		t.Errorf("node2 locality = %+v, want %+v", got, want)
	}
}

func TestParseEmptyModels(t *testing.T) {
	for _, in := range []string{"", "# nothing\n", "~", "{}", "namespaces:\nnodes: []\nworkloads: ~\nservices:\n"} {
		s, err := Parse("mesh.yaml", []byte(in), EnrollmentOptions{})
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if len(s.Workloads)+len(s.Services)+len(s.Namespaces)+len(s.Nodes) != 0 {
			t.Errorf("Parse(%q) is not empty", in)
		}
	}
}

func TestParseScalarsAsStrings(t *testing.T) {
	s, err := Parse("mesh.yaml", []byte(`
workloads:
  - name: a
    namespace: default
    labels: {version: 1, canary: true, empty: }
`), EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(s.Workloads[0].Labels), "map[canary:true empty: version:1]"; got != want {
		t.Errorf("labels = %s, want %s", got, want)
	}
}

func TestParseCapsErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString("workloads:\n  - name: a\n    namespace: default\n    ips:\n")
	for range maxReportedErrors + 10 {
		b.WriteString("      - bad\n")
	}
	_, err := Parse("mesh.yaml", []byte(b.String()), EnrollmentOptions{})
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxReportedErrors+1 {
		t.Fatalf("got %d error lines, want %d", len(lines), maxReportedErrors+1)
	}
	if got, want := lines[len(lines)-1], "mesh.yaml: and 10 more errors"; got != want {
		t.Errorf("last line = %q, want %q", got, want)
	}
}

func TestLoadFileMissing(t *testing.T) {
	_, err := LoadFile(filepath.Join(t.TempDir(), "nope.yaml"), EnrollmentOptions{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadFile(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestParseIPv4AndIPv6(t *testing.T) {
	s, err := Parse("mesh.yaml", []byte(`
workloads:
  - name: a
    namespace: default
    ips: [198.18.1.1, fd00::1, "::2"]
  - name: b
    namespace: default
    ips:
      - ::3
      - "::ffff:198.18.1.4"
`), EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]string{"198.18.1.1": "a", "fd00::1": "a", "::2": "a", "::3": "b", "198.18.1.4": "b"} {
		if w := s.WorkloadByIP(netip.MustParseAddr(ip)); w == nil || w.Name != want {
			t.Errorf("WorkloadByIP(%s) = %v, want %s", ip, w, want)
		}
	}
	if got, want := fmt.Sprint(s.Workloads[1].IPs), "[::3 198.18.1.4]"; got != want {
		t.Errorf("IPs = %s, want %s (IPv4-mapped stored as IPv4)", got, want)
	}
}

// The example in the configuration reference must stay valid.
func TestDocsExampleParses(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Mesh model file")
	if !ok {
		t.Fatal(`docs/configuration.md has no "## Mesh model file" section`)
	}
	_, rest, ok := strings.Cut(section, "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml example in the mesh model file section")
	}
	s, err := Parse("configuration.md", []byte(example), EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(s.ServiceByName("default", "echo").Endpoints), "[{default/echo-1 198.18.2.10} {default/echo-2 198.18.2.11}]"; got != want {
		t.Errorf("echo endpoints = %s, want %s", got, want)
	}
	if w := s.WorkloadByUID("default/echo-2"); w.Enrolled {
		t.Error("opted-out workload enrolled")
	}
}
