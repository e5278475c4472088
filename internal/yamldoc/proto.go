package yamldoc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/golang/protobuf/jsonpb" // deprecated, but Istio's own JSON form (see DecodeProto)
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"
	sigyaml "sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/internal/fielderr"
)

// Istio's API objects are protobuf messages whose generated UnmarshalJSON ignores
// unknown fields; these decode them strictly instead, with each problem at its line.

// DecodeProto decodes the mapping n (the field path names it, e.g. "spec") into msg
// as Istio's generated UnmarshalJSON reads it (golang/protobuf's jsonpb: durations in
// Go's form, "1m30s", which protojson refuses), but refusing unknown fields. It first
// checks every field against msg's descriptor (names, kinds of values, enum names,
// durations), so that each problem has its path and line; only a clean tree is handed
// to jsonpb, whose remaining errors are then reported at n.
// lines, when not nil, receives the line of every path visited. The errors have no
// File.
func DecodeProto(n *yaml.Node, path string, msg proto.Message, lines map[string]int) fielderr.List {
	c := protoChecker{lines: lines}
	c.message(n, path, msg.ProtoReflect().Descriptor())
	if len(c.errs) > 0 {
		return c.errs
	}
	data, err := JSON(n)
	if err == nil {
		err = (&jsonpb.Unmarshaler{}).Unmarshal(bytes.NewReader(data), protoadapt.MessageV1Of(msg))
	}
	if err != nil {
		c.fail(n, path, err.Error())
	}
	return c.errs
}

// JSON converts a YAML tree to JSON.
func JSON(n *yaml.Node) ([]byte, error) {
	raw, err := yaml.Marshal(n)
	if err != nil {
		return nil, err
	}
	return sigyaml.YAMLToJSON(raw)
}

// StrictJSON decodes n into v (a type with JSON tags) through JSON, refusing unknown
// fields.
func StrictJSON(n *yaml.Node, v any) error {
	data, err := JSON(n)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// ChildPath names a field of the object at path (`spec.rules`), or, with mapKey, an
// entry of the map at path (`matchLabels["app"]`, `portLevelMtls[8080]`).
func ChildPath(path, key string, mapKey bool) string {
	if mapKey {
		if _, err := strconv.Atoi(key); err == nil {
			return fmt.Sprintf("%s[%s]", path, key)
		}
		return fmt.Sprintf("%s[%q]", path, key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

type protoChecker struct {
	lines map[string]int
	errs  fielderr.List
}

func (c *protoChecker) fail(n *yaml.Node, path, msg string) {
	c.errs = append(c.errs, &fielderr.Error{Line: n.Line, Path: path, Msg: msg})
}

func (c *protoChecker) line(path string, n *yaml.Node) {
	if c.lines != nil {
		c.lines[path] = n.Line
	}
}

func (c *protoChecker) message(n *yaml.Node, path string, md protoreflect.MessageDescriptor) {
	c.line(path, n)
	if n.Kind != yaml.MappingNode {
		c.fail(n, path, fmt.Sprintf("expected a mapping, got %s", Describe(n)))
		return
	}
	oneofs := map[protoreflect.FullName]*yaml.Node{} // oneof -> the key of its member set
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		fp := ChildPath(path, k.Value, false)
		c.line(fp, k)
		fd := md.Fields().ByJSONName(k.Value)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			c.fail(k, fp, "unknown field")
			continue
		}
		// jsonpb keeps the last member of a oneof silently.
		if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() && v.Tag != "!!null" {
			if prev, set := oneofs[o.FullName()]; set {
				c.fail(k, fp, fmt.Sprintf("only one of %s and %s may be set (%s is, line %d)", prev.Value, k.Value, prev.Value, prev.Line))
				continue
			}
			oneofs[o.FullName()] = k
		}
		c.field(v, fp, fd)
	}
}

func (c *protoChecker) field(n *yaml.Node, path string, fd protoreflect.FieldDescriptor) {
	if n.Tag == "!!null" {
		return
	}
	switch {
	case fd.IsMap():
		if n.Kind != yaml.MappingNode {
			c.fail(n, path, fmt.Sprintf("expected a map, got %s", Describe(n)))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := ChildPath(path, k.Value, true)
			c.line(kp, k)
			c.value(k, kp, fd.MapKey())
			c.value(v, kp, fd.MapValue())
		}
	case fd.IsList():
		if n.Kind != yaml.SequenceNode {
			c.fail(n, path, fmt.Sprintf("expected a list, got %s", Describe(n)))
			return
		}
		for i, item := range n.Content {
			c.value(item, fmt.Sprintf("%s[%d]", path, i), fd)
		}
	default:
		c.value(n, path, fd)
	}
}

// value checks one value of fd's kind (a list's item, a map's key or value).
func (c *protoChecker) value(n *yaml.Node, path string, fd protoreflect.FieldDescriptor) {
	c.line(path, n)
	if n.Tag == "!!null" {
		return
	}
	want := ""
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		md := fd.Message()
		switch name := string(md.FullName()); {
		case name == "google.protobuf.Duration":
			if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
				if _, err := time.ParseDuration(n.Value); err == nil {
					return
				}
			}
			c.fail(n, path, fmt.Sprintf("expected a duration such as 10s, 1.5s or 1m30s, got %s", Describe(n)))
		case strings.HasPrefix(name, "google.protobuf.") && strings.HasSuffix(name, "Value") && md.Fields().Len() == 1:
			c.value(n, path, md.Fields().ByName("value")) // a wrapper is written as what it wraps
		case strings.HasPrefix(name, "google.protobuf."):
			// Other well-known types (Struct, Any...) have their own JSON forms: jsonpb checks them.
		default:
			c.message(n, path, md)
		}
		return
	case protoreflect.EnumKind:
		if n.Kind == yaml.ScalarNode && (fd.Enum().Values().ByName(protoreflect.Name(n.Value)) != nil || n.Tag == "!!int") {
			return
		}
		var names []string
		vals := fd.Enum().Values()
		for i := 0; i < vals.Len(); i++ {
			names = append(names, string(vals.Get(i).Name()))
		}
		c.fail(n, path, fmt.Sprintf("%s is not one of %s", Describe(n), strings.Join(names, ", ")))
		return
	case protoreflect.StringKind, protoreflect.BytesKind:
		want = "!!str"
	case protoreflect.BoolKind:
		want = "!!bool"
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		if n.Tag == "!!float" {
			return
		}
		want = "!!int"
	default: // the integer kinds
		want = "!!int"
	}
	if n.Kind != yaml.ScalarNode || n.Tag != want {
		if want == "!!int" && n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
			if _, err := strconv.ParseInt(n.Value, 10, 64); err == nil {
				return // map keys (portLevelMtls) and 64-bit integers are written either way
			}
		}
		c.fail(n, path, fmt.Sprintf("expected %s, got %s", map[string]string{"!!str": "a string", "!!bool": "true or false", "!!int": "a number"}[want], Describe(n)))
	}
}
