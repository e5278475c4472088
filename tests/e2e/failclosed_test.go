package e2e

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/pcap"
)

// With ztunnel killed, captured pods fail closed: open connections end, new ones cannot be
// made, and nothing leaves the node in clear. A restarted ztunnel takes over the pinned
// capture with no manual step.
func TestZtunnelKilledFailsClosed(t *testing.T) {
	requireMesh(t)
	node1 := m.Topo.Nodes[0]
	marker := []byte("AMBIT-FAIL-CLOSED-MARKER-91be")

	ctx := context.Background()
	open, err := client.Dial(ctx, "tcp", podAddr(echoA).String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if _, err := open.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_ = open.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(open, buf); err != nil {
		t.Fatalf("established connection: %v", err)
	}

	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = m.StartZtunnel(context.Background(), node1)
		}
	})

	file := captureUnderlay(t, func() {
		if err := m.KillZtunnel(node1); err != nil {
			t.Fatal(err)
		}
		// The open connection must not go on in clear.
		_, _ = open.Write(marker)
		_ = open.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := open.Read(buf)
		if err == nil && n > 0 {
			t.Errorf("open connection still carries data after ztunnel died: %q", buf[:n])
		}
		// New connections, to mesh and non-mesh destinations, fail.
		dialFails(t, client, podAddr(echoA))
		dialFails(t, client, podAddr(plains))
		dialFails(t, client, echoVIP)
	})
	v, err := pcap.VerifyWire(file, marker)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wire while ztunnel was down: %s", v)
	if v.MarkerVisible || len(v.NotHBONE) > 0 {
		t.Fatalf("traffic left node1 in clear while ztunnel was down: %s", v)
	}

	if err := m.StartZtunnel(ctx, node1); err != nil {
		t.Fatal(err)
	}
	restarted = true
	echoOK(t, client, podAddr(echoA))
	echoOK(t, client, echoVIP)
	echoOK(t, client, podAddr(plains))
}

// A malformed model stops ztunnel at start with an error naming the file, line and field,
// before it touches capture.
func TestBadModelRejected(t *testing.T) {
	requireMesh(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("workloads:\n  - name: x\n    namespace: default\n    ips: [198.18.1.300]\n    color: blue\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(m.Bin, "ztunnel"),
		"-node", "node9", "-model", bad,
		"-ca-addr", "unix://"+m.CASocket(), "-ca-token-file", m.TokenFile("node3"), "-ca-root-file", m.CARoot(),
		"-bpf-pin-path", filepath.Join(dir, "pins"),
		"-readiness-addr", "off", "-metrics-addr", "off", "-admin-addr", "off")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("ztunnel with a bad model: err %v, want a non-zero exit\n%s", err, out)
	}
	for _, want := range []string{"bad.yaml:4", "198.18.1.300", "bad.yaml:5", "color"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pins")); err == nil {
		t.Errorf("ztunnel created pins before validating its model")
	}
}
