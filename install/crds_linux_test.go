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

// istioCRDsTemplate is the chart's copy of Istio's CRDs (scripts/gen-istio-crds.sh).
const istioCRDsTemplate = "templates/istio-crds.yaml"

// gatewayAPICRDsTemplate is the chart's copy of the Gateway API's CRDs
// (scripts/gen-gateway-api-crds.sh).
const gatewayAPICRDsTemplate = "templates/gateway-api-crds.yaml"

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

// With istioCRDs.install the chart installs exactly the PeerAuthentication,
// AuthorizationPolicy and DestinationRule CRDs of the istio.io/api module go.mod names,
// unchanged; without it, none.
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
	names := []string{"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io", "destinationrules.networking.istio.io"}
	for _, name := range names {
		if got[name] == nil || !reflect.DeepEqual(got[name], all[name]) {
			t.Errorf("the chart's %s differs from istio.io/api's: run scripts/gen-istio-crds.sh", name)
		}
	}
	if len(got) != len(names) {
		t.Errorf("the chart renders %d CRDs, want %d", len(got), len(names))
	}
	if _, stderr, err := helmCmd(t, "template", "ambit", chartDir, "--show-only", istioCRDsTemplate); err == nil || !strings.Contains(string(stderr), "could not find template") {
		t.Errorf("without istioCRDs.install the CRDs are rendered (err %v, %s)", err, stderr)
	}
}

// With gatewayAPICRDs.install the chart installs exactly the standard-channel CRDs of
// the kinds waypoints use, from the sigs.k8s.io/gateway-api module go.mod names,
// unchanged but for Helm's keep annotation; without it, none.
func TestGatewayAPICRDsAreUpstreams(t *testing.T) {
	out, stderr, err := helmCmd(t, "template", "ambit", chartDir, "--set", "gatewayAPICRDs.install=true", "--show-only", gatewayAPICRDsTemplate)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr)
	}
	got := crdsByName(t, out)
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("go list sigs.k8s.io/gateway-api: %v", err)
	}
	kinds := []string{"gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants"}
	for _, kind := range kinds {
		name := kind + ".gateway.networking.k8s.io"
		src, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "config", "crd", "standard", "gateway.networking.k8s.io_"+kind+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		crd := got[name]
		if crd == nil {
			t.Errorf("the chart has no %s", name)
			continue
		}
		ann, _ := crd["metadata"].(map[string]any)["annotations"].(map[string]any)
		if ann["helm.sh/resource-policy"] != "keep" {
			t.Errorf("%s: not kept on uninstall", name)
		}
		delete(ann, "helm.sh/resource-policy")
		if want := crdsByName(t, src)[name]; !reflect.DeepEqual(crd, want) {
			t.Errorf("the chart's %s differs from sigs.k8s.io/gateway-api's: run scripts/gen-gateway-api-crds.sh", name)
		}
	}
	if len(got) != len(kinds) {
		t.Errorf("the chart renders %d CRDs, want %d", len(got), len(kinds))
	}
	if _, stderr, err := helmCmd(t, "template", "ambit", chartDir, "--show-only", gatewayAPICRDsTemplate); err == nil || !strings.Contains(string(stderr), "could not find template") {
		t.Errorf("without gatewayAPICRDs.install the CRDs are rendered (err %v, %s)", err, stderr)
	}
}
