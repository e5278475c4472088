package install

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// istioCRDsTemplate is the chart's copy of Istio's security CRDs (scripts/gen-istio-crds.sh).
const istioCRDsTemplate = "templates/istio-security-crds.yaml"

// crdsByName splits YAML documents and returns the CustomResourceDefinitions by name.
func crdsByName(tb testing.TB, data []byte) map[string]map[string]any {
	tb.Helper()
	out := map[string]map[string]any{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			tb.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			tb.Fatal(err)
		}
		if obj["kind"] != "CustomResourceDefinition" {
			continue
		}
		name, _ := obj["metadata"].(map[string]any)["name"].(string)
		out[name] = obj
	}
}

// With istioCRDs.install the chart installs exactly the PeerAuthentication and
// AuthorizationPolicy CRDs of the istio.io/api module go.mod names, unchanged; without it,
// none.
func TestIstioCRDsAreIstios(t *testing.T) {
	out, stderr, err := helmCmd(t, "template", "ambit", chartDir, "--set", "istioCRDs.install=true", "--show-only", istioCRDsTemplate)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr)
	}
	got := crdsByName(t, out)
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		t.Fatalf("go list istio.io/api: %v", err)
	}
	src, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	all := crdsByName(t, src)
	for _, name := range []string{"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io"} {
		if !reflect.DeepEqual(got[name], all[name]) {
			t.Errorf("the chart's %s differs from istio.io/api's: run scripts/gen-istio-crds.sh", name)
		}
	}
	if len(got) != 2 {
		t.Errorf("the chart renders %d CRDs, want 2", len(got))
	}
	if _, stderr, err := helmCmd(t, "template", "ambit", chartDir, "--show-only", istioCRDsTemplate); err == nil || !strings.Contains(string(stderr), "could not find template") {
		t.Errorf("without istioCRDs.install the CRDs are rendered (err %v, %s)", err, stderr)
	}
}
