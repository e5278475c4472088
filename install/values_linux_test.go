package install

import (
	"strings"
	"testing"
)

// TestRenderRejectsBadValues: values.schema.json (and the template checks a schema cannot
// express) refuse bad values at render time, with a message naming the value.
func TestRenderRejectsBadValues(t *testing.T) {
	tests := []struct {
		name string
		set  string
		want []string // all must appear in helm's error output
	}{
		{"mark in hex", "ztunnel.mark=0x400", []string{"mark", "integer"}},
		{"mark not a number", "ztunnel.mark=high", []string{"mark", "integer"}},
		{"mark zero", "ztunnel.mark=0", []string{"mark"}},
		{"kernel main table", "ztunnel.routeTable=254", []string{"ztunnel.routeTable 254 is one of the kernel's own tables"}},
		{"negative table", "ztunnel.routeTable=-1", []string{"routeTable"}},
		{"no hbone connection", "ztunnel.hboneConnsPerPeer=0", []string{"hboneConnsPerPeer"}},
		{"too many hbone connections", "ztunnel.hboneConnsPerPeer=65", []string{"hboneConnsPerPeer"}},
		{"no pool idle timeout", "ztunnel.hbonePoolIdleTimeoutSeconds=0", []string{"hbonePoolIdleTimeoutSeconds"}},
		{"gomaxprocs zero", "ztunnel.goMaxProcs=0", []string{"goMaxProcs"}},
		{"gomaxprocs word", "ztunnel.goMaxProcs=max", []string{"goMaxProcs"}},
		{"data path", "ztunnel.dataPath=turbo", []string{"dataPath"}},
		{"no streams per peer", "ztunnel.maxStreamsPerPeer=0", []string{"maxStreamsPerPeer"}},
		{"unknown value", "ztunnel.marc=1024", []string{"marc"}},
		{"log level", "logging.level=verbose", []string{"level"}},
		{"pull policy", "image.pullPolicy=Sometimes", []string{"pullPolicy"}},
		{"uplink with a comma", "ztunnel.uplinks[0]=eth0\\,eth1", []string{"uplinks"}},
		{"no uplinks", "ztunnel.uplinks=null", []string{"uplinks"}},
		{"trust domain", "trustDomain=Example Org", []string{"trustDomain"}},
		{"label value", "enrollment.namespaceLabel.value=not ok", []string{"value"}},
		{"pin dir path", "ztunnel.bpf.pinDir=a/b", []string{"pinDir"}},
		{"leaf ttl", "ca.leafTTL=1day", []string{"leafTTL"}},
		{"waypoint arg not a flag", "waypointController.waypoint.args={log-level=debug}", []string{"args"}},
		{"waypoint pull policy", "waypointController.waypoint.pullPolicy=Sometimes", []string{"pullPolicy"}},
		{"controller name without a path", "waypointController.controllerName=ambit", []string{"controllerName"}},
		{"drain longer than grace", "ztunnel.drainTimeoutSeconds=30", []string{"ztunnel.drainTimeoutSeconds (30) must be less than ztunnel.terminationGracePeriodSeconds (30)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := helmTemplate(t, "ambit-system", "--set", tc.set)
			if err == nil {
				t.Fatalf("--set %s rendered; want an error", tc.set)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("--set %s: error does not mention %q:\n%v", tc.set, w, err)
				}
			}
		})
	}
}

// TestLint: helm lint --strict passes for the defaults (it also checks NOTES.txt renders).
func TestLint(t *testing.T) {
	out, stderr, err := helmCmd(t, "lint", "--strict", chartDir, "--namespace", "ambit-system", "--kube-version", kubeVersion)
	if err != nil {
		t.Fatalf("helm lint --strict: %v\n%s%s", err, out, stderr)
	}
}
