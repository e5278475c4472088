package install

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
)

// chartDir is the chart, relative to this package (go test runs in the package directory).
const chartDir = "helm/ambit"

// kubeVersion is the cluster version the chart is rendered for (the tests' apiserver).
const kubeVersion = "v" + kubetest.KubeVersion

// manifest is one rendering of the chart.
type manifest struct {
	docs []renderedDoc
}

// renderedDoc is one object of a rendering, as JSON and as its typed Go value.
type renderedDoc struct {
	json  []byte
	obj   runtime.Object
	u     *unstructured.Unstructured
	title string // Kind namespace/name, for messages
}

// helmCmd runs helm with a private home so no user or machine configuration leaks in.
func helmCmd(tb testing.TB, args ...string) (stdout, stderr []byte, err error) {
	tb.Helper()
	home := tb.TempDir()
	cmd := exec.Command(requireBinaries(tb).Helm, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.Bytes(), err
}

// helmTemplate renders the chart as release "ambit" in namespace ns; extra are more helm
// flags (--set ..., -f ...). The error carries helm's stderr.
func helmTemplate(tb testing.TB, ns string, extra ...string) (manifest, error) {
	tb.Helper()
	args := append([]string{"template", "ambit", chartDir, "--namespace", ns, "--kube-version", kubeVersion}, extra...)
	out, stderr, err := helmCmd(tb, args...)
	if err != nil {
		return manifest{}, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr)
	}
	return parseManifest(out)
}

// mustRender is helmTemplate that fails tb on error.
func mustRender(tb testing.TB, ns string, extra ...string) manifest {
	tb.Helper()
	m, err := helmTemplate(tb, ns, extra...)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// strictDecoder decodes into the typed k8s.io/api objects and refuses unknown and duplicate
// fields, so a misspelt field in a template fails here rather than being dropped.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

func parseManifest(b []byte) (manifest, error) {
	var m manifest
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return m, fmt.Errorf("split rendered manifest: %w", err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return m, fmt.Errorf("document %d: %w\n%s", i, err, doc)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
			continue // empty document (a template rendered nothing)
		}
		obj, _, err := strictDecoder.Decode(js, nil, nil)
		if err != nil {
			return m, fmt.Errorf("decode document %d: %w\n%s", i, err, doc)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return m, fmt.Errorf("document %d as unstructured: %w", i, err)
		}
		title := u.GetKind() + " " + u.GetName()
		if u.GetNamespace() != "" {
			title = u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
		}
		m.docs = append(m.docs, renderedDoc{json: js, obj: obj, u: u, title: title})
	}
	return m, nil
}

// titles lists the objects as "Kind namespace/name", in rendering order.
func (m manifest) titles() []string {
	var s []string
	for _, d := range m.docs {
		s = append(s, d.title)
	}
	return s
}

// find returns the single object of type T named name (in namespace ns for namespaced
// kinds), or fails tb.
func find[T runtime.Object](tb testing.TB, m manifest, ns, name string) T {
	tb.Helper()
	var found []T
	for _, d := range m.docs {
		o, ok := d.obj.(T)
		if ok && d.u.GetName() == name && d.u.GetNamespace() == ns {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		tb.Fatalf("want exactly one %T %s/%s in the rendering, found %d; rendered: %v", zero, ns, name, len(found), m.titles())
	}
	return found[0]
}

// count returns how many objects of type T the rendering holds.
func count[T runtime.Object](m manifest) int {
	n := 0
	for _, d := range m.docs {
		if _, ok := d.obj.(T); ok {
			n++
		}
	}
	return n
}
