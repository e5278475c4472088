package discovery

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/internal/fielderr"
	"github.com/ambitmesh/ambit/internal/yamldoc"
)

// NetworkingGroup is Istio's traffic API group. Of its kinds Ambit reads only
// DestinationRule (KindDestinationRule), which the waypoints compile; the others are
// reported as not supported.
const NetworkingGroup = "networking.istio.io"

// KindDestinationRule is Istio's per-destination traffic policy.
const KindDestinationRule = "DestinationRule"

// destinationRuleVersions are the versions Istio serves DestinationRule at, all with
// one schema.
var destinationRuleVersions = []string{"v1", "v1beta1", "v1alpha3"}

// parseDestinationRules returns the DestinationRules of objs' networking.istio.io
// documents, and the problems of those that cannot be decoded (left out) and of the
// group's other kinds. first maps each "namespace/name" already declared to where, so
// that a repeated one is reported and left out, across files.
func parseDestinationRules(objs []yamldoc.Object, first map[string]string) ([]*networkingv1.DestinationRule, []string) {
	var out []*networkingv1.DestinationRule
	var problems []string
	for _, o := range objs {
		if o.Group() != NetworkingGroup {
			continue
		}
		if o.Kind != KindDestinationRule {
			ns, name := looseMeta(o.Node)
			problems = append(problems, fmt.Sprintf("%s: %s %s/%s: not supported: of %s Ambit reads only %s",
				o.Origin(), cmp.Or(o.Kind, "(no kind)"), ns, cmp.Or(name, "(no name)"), NetworkingGroup, KindDestinationRule))
			continue
		}
		dr, errs := decodeDestinationRule(o.Node)
		ref := dr.Namespace + "/" + cmp.Or(dr.Name, "(no name)")
		if len(errs) > 0 {
			slices.SortStableFunc(errs, func(a, b *fielderr.Error) int { return cmp.Compare(a.Line, b.Line) })
			for _, e := range errs {
				problems = append(problems, objectProblem(o, KindDestinationRule, ref, e))
			}
			continue
		}
		if prev, dup := first[ref]; dup {
			problems = append(problems, fmt.Sprintf("%s: %s %s: already declared at %s; left out", o.Origin(), KindDestinationRule, ref, prev))
			continue
		}
		first[ref] = o.Origin()
		out = append(out, dr)
	}
	return out, problems
}

// objectProblem formats a problem of the object ref declared by o: "file:line: Kind
// ns/name: path: problem", at the line of the field when known.
func objectProblem(o yamldoc.Object, kind, ref string, e *fielderr.Error) string {
	line := e.Line
	if line == 0 {
		line = o.Line
	}
	msg := e.Msg
	if e.Path != "" {
		msg = e.Path + ": " + msg
	}
	return fmt.Sprintf("%s:%d: %s %s: %s", o.File, line, kind, ref, msg)
}

// DecodeDestinationRule decodes one DestinationRule object (YAML or JSON, as an API
// server returns it) strictly: unknown fields and values of the wrong type are errors
// (*FieldError values joined, each naming the field path), which Istio's own
// UnmarshalJSON lets through. The namespace defaults to "default". On error the
// returned object carries what of the metadata could be read, to name it.
func DecodeDestinationRule(data []byte) (*networkingv1.DestinationRule, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return &networkingv1.DestinationRule{}, fmt.Errorf("decode DestinationRule: %w", err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	dr, errs := decodeDestinationRule(root)
	return dr, errs.Err()
}

// decodeDestinationRule decodes the mapping n. The object returned always has the
// name and namespace that could be read.
func decodeDestinationRule(n *yaml.Node) (*networkingv1.DestinationRule, fielderr.List) {
	dr := &networkingv1.DestinationRule{}
	var errs fielderr.List
	fail := func(at *yaml.Node, path, msg string) {
		errs = append(errs, &fielderr.Error{Line: at.Line, Path: path, Msg: msg})
	}
	if n.Kind != yaml.MappingNode {
		fail(n, "", "a DestinationRule must be a mapping, got "+yamldoc.Describe(n))
		dr.Namespace = defaultNamespaceName
		return dr, errs
	}
	var meta, spec *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "apiVersion":
			dr.APIVersion = v.Value
		case "kind":
			dr.Kind = v.Value
		case "metadata":
			meta = v
		case "spec":
			spec = v
		case "status":
			// Written by Istio, not by users; kubectl get -o yaml prints it.
		default:
			fail(k, k.Value, "unknown field")
		}
	}
	group, version, _ := strings.Cut(dr.APIVersion, "/")
	if group != NetworkingGroup || !slices.Contains(destinationRuleVersions, version) {
		fail(n, "apiVersion", fmt.Sprintf("%q is not %s/%s", dr.APIVersion, NetworkingGroup, strings.Join(destinationRuleVersions, ", ")))
	}
	if meta == nil || isNull(meta) {
		fail(n, "metadata", msgRequired+" (name, namespace)")
		dr.Namespace = defaultNamespaceName
	} else if err := yamldoc.StrictJSON(meta, &dr.ObjectMeta); err != nil {
		fail(meta, "metadata", err.Error())
		dr.ObjectMeta = metav1.ObjectMeta{}
		dr.Namespace, dr.Name = looseMeta(n)
	} else {
		if dr.Namespace == "" {
			dr.Namespace = defaultNamespaceName
		}
		var metaErrs fielderr.List
		checkSubdomain(&metaErrs, "metadata.name", dr.Name)
		checkLabelName(&metaErrs, "metadata.namespace", dr.Namespace)
		for _, e := range metaErrs {
			e.Line = keyLine(meta, strings.TrimPrefix(e.Path, "metadata."))
		}
		errs = append(errs, metaErrs...)
	}
	if spec != nil && !isNull(spec) {
		errs = append(errs, yamldoc.DecodeProto(spec, "spec", &dr.Spec, nil)...)
	}
	return dr, errs
}

// defaultNamespaceName is an object's namespace when it names none, as with kubectl apply.
const defaultNamespaceName = "default"

// looseMeta reads metadata.namespace (default "default") and metadata.name of the
// object n, whatever else is wrong with it, to name it in problems.
func looseMeta(n *yaml.Node) (namespace, name string) {
	var m struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if data, err := yamldoc.JSON(n); err == nil {
		_ = json.Unmarshal(data, &m) // best effort: what cannot be read stays empty
	}
	if m.Metadata.Namespace == "" {
		m.Metadata.Namespace = defaultNamespaceName
	}
	return m.Metadata.Namespace, m.Metadata.Name
}

// keyLine is the line of key in mapping n, or n's own line.
func keyLine(n *yaml.Node, key string) int {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i].Line
		}
	}
	return n.Line
}
