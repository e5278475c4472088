package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambitmesh/ambit/internal/fielderr"
	"github.com/ambitmesh/ambit/internal/yamldoc"
)

// Group is the API group of the objects a manifest may hold (Istio serves it at
// v1 and v1beta1 with the same schema; the kinds are KindAuthorization and
// KindPeerAuth).
const Group = "security.istio.io"

// defaultNamespace is an object's without one, as kubectl applies it.
const defaultNamespace = "default"

// Manifests is what ParseManifests found.
type Manifests struct {
	Authorizations      []*Authorization
	PeerAuthentications []*PeerAuthentication
}

// ParseManifests decodes the Kubernetes-style YAML documents in data, the same
// AuthorizationPolicy and PeerAuthentication objects a user applies to a
// cluster, strictly and with Istio's types. seq numbers the objects (their
// order among equals) and is advanced.
//
// A file that is not YAML returns an error and nothing else. A document that is
// not one of the two kinds is left out and reported. An object that cannot be
// used (unknown field, wrong type, invalid value) is returned with Invalid set,
// naming file:line, field and problem, so that it fails closed; its problems
// are reported too. Documents of the API groups in others (read by other parsers
// from the same files, such as Gateway API objects) are skipped silently.
func ParseManifests(file string, data []byte, seq *int, others ...string) (Manifests, fielderr.List, error) {
	objs, err := yamldoc.Objects(file, data)
	if err != nil {
		return Manifests{}, nil, err
	}
	m, problems := ParseObjects(objs, seq, others...)
	return m, problems, nil
}

// ParseObjects is ParseManifests on documents already split.
func ParseObjects(objs []yamldoc.Object, seq *int, others ...string) (Manifests, fielderr.List) {
	var out Manifests
	var problems fielderr.List
	for _, o := range objs {
		file := o.File
		if slices.Contains(others, o.Group()) {
			continue
		}
		root := o.Node
		d := &document{file: file, lines: map[string]int{}}
		*seq++
		ap, pa := d.object(root, *seq)
		switch {
		case ap != nil:
			out.Authorizations = append(out.Authorizations, ap)
			d.locate(ap.Invalid)
		case pa != nil:
			out.PeerAuthentications = append(out.PeerAuthentications, pa)
			d.locate(pa.Invalid)
		}
		problems = append(problems, d.errs...)
		for _, e := range fielderr.All(invalidOf(ap, pa)) {
			problems = append(problems, e)
		}
	}
	return out, problems
}

func invalidOf(ap *Authorization, pa *PeerAuthentication) error {
	if ap != nil {
		return ap.Invalid
	}
	if pa != nil {
		return pa.Invalid
	}
	return nil
}

// document decodes one object, remembering the line of every field path.
type document struct {
	file  string
	lines map[string]int
	errs  fielderr.List // problems that are not the object's own (kind, envelope)
	own   fielderr.List // problems of the object: they make it Invalid
}

func (d *document) fail(own bool, n *yaml.Node, path, msg string) {
	e := &fielderr.Error{File: d.file, Line: n.Line, Path: path, Msg: msg}
	if own {
		d.own = append(d.own, e)
	} else {
		d.errs = append(d.errs, e)
	}
}

func (d *document) object(root *yaml.Node, seq int) (*Authorization, *PeerAuthentication) {
	if root.Kind != yaml.MappingNode {
		d.fail(false, root, "", "a document must be a Kubernetes object (a mapping with apiVersion and kind)")
		return nil, nil
	}
	var apiVersion, kind string
	var metaNode, specNode *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		d.lines[k.Value] = k.Line
		switch k.Value {
		case "apiVersion":
			apiVersion = v.Value
		case "kind":
			kind = v.Value
		case "metadata":
			metaNode = v
		case "spec":
			specNode = v
		case "status":
		default:
			d.fail(true, k, k.Value, "unknown field")
		}
	}
	group, version, _ := strings.Cut(apiVersion, "/")
	if group != Group || (version != "v1" && version != "v1beta1") {
		d.fail(false, root, "apiVersion", fmt.Sprintf("%q is not %s/v1 or %s/v1beta1", apiVersion, Group, Group))
		return nil, nil
	}
	var msg proto.Message
	switch kind {
	case KindAuthorization:
		msg = &securityv1beta1.AuthorizationPolicy{}
	case KindPeerAuth:
		msg = &securityv1beta1.PeerAuthentication{}
	default:
		d.fail(false, root, "kind", fmt.Sprintf("%q is not %s or %s", kind, KindAuthorization, KindPeerAuth))
		return nil, nil
	}
	obj := Object{Meta: Meta{Seq: seq, Origin: fmt.Sprintf("%s:%d", d.file, root.Line)}}
	d.metadata(metaNode, root, &obj)
	if specNode != nil && specNode.Tag != "!!null" {
		d.spec(specNode, msg)
	}
	var ap *Authorization
	var pa *PeerAuthentication
	switch m := msg.(type) {
	case *securityv1beta1.AuthorizationPolicy:
		ap = CompileAuthorization(obj, m)
		ap.Invalid = joinOwn(d.own, ap.Invalid)
		if ap.Invalid != nil {
			ap.Rules = nil
		}
	case *securityv1beta1.PeerAuthentication:
		pa = CompilePeerAuthentication(obj, m)
		pa.Invalid = joinOwn(d.own, pa.Invalid)
		if pa.Invalid != nil {
			pa.Ports = nil
		}
	}
	return ap, pa
}

func joinOwn(own fielderr.List, compiled error) error {
	if len(own) == 0 {
		return compiled
	}
	return errors.Join(own.Err(), compiled)
}

func (d *document) metadata(n, root *yaml.Node, obj *Object) {
	if n == nil {
		d.fail(true, root, "metadata", "is required (name, namespace)")
		return
	}
	d.walkPaths(n, "metadata")
	var meta metav1.ObjectMeta
	if err := yamldoc.StrictJSON(n, &meta); err != nil {
		d.fail(true, n, "metadata", err.Error())
		return
	}
	obj.Name, obj.Namespace, obj.Annotations = meta.Name, meta.Namespace, meta.Annotations
	if obj.Namespace == "" {
		obj.Namespace = defaultNamespace
	}
	if !meta.CreationTimestamp.IsZero() {
		obj.Created = meta.CreationTimestamp.Time
	}
}

// walkPaths records the line of every mapping key below n, named as compile
// names paths (matchLabels["k"], portLevelMtls[8080], rules[0]).
func (d *document) walkPaths(n *yaml.Node, path string) {
	d.lines[path] = n.Line
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			kp := yamldoc.ChildPath(path, n.Content[i].Value, false)
			d.walkPaths(n.Content[i+1], kp)
			d.lines[kp] = n.Content[i].Line // the key's line, not its value's
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			d.walkPaths(c, fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

// spec checks the spec's fields and types against the message's descriptor
// (so that each problem has its line) and then decodes it strictly.
func (d *document) spec(n *yaml.Node, msg proto.Message) {
	for _, e := range yamldoc.DecodeProto(n, "spec", msg, d.lines) {
		e.File = d.file
		d.own = append(d.own, e)
	}
}

// locate gives the compiler's problems in err the file and the line of their
// path (or its nearest ancestor that has one).
func (d *document) locate(err error) {
	for _, e := range fielderr.All(err) {
		if e.File != "" {
			continue
		}
		e.File = d.file
		for p := e.Path; p != ""; p = parentPath(p) {
			if l, ok := d.lines[p]; ok {
				e.Line = l
				break
			}
		}
	}
}

// parentPath strips the last ".field" or "[index]" of p.
func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i >= 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}
