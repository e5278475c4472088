package yamldoc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
	sigyaml "sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/internal/fielderr"
)

// Object is one Kubernetes-style document of a manifest file.
type Object struct {
	File       string
	Line       int // of the document
	APIVersion string
	Kind       string
	Node       *yaml.Node // the document's mapping
}

// Group is the API group of the object's apiVersion ("" for the core group).
func (o Object) Group() string {
	g, _, found := strings.Cut(o.APIVersion, "/")
	if !found {
		return ""
	}
	return g
}

// Origin is "file:line".
func (o Object) Origin() string { return fmt.Sprintf("%s:%d", o.File, o.Line) }

// Objects splits data into its non-empty documents. A file that is not YAML returns
// its syntax error and nothing else; a document that is not a mapping is returned
// with empty APIVersion and Kind (the caller reports it).
func Objects(file string, data []byte) ([]Object, error) {
	var out []Object
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := Decode(dec, &doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, SyntaxError(file, err)
		}
		root := &doc
		if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
			root = root.Content[0]
		}
		if root.Kind == yaml.DocumentNode || root.Tag == "!!null" {
			continue
		}
		o := Object{File: file, Line: root.Line, Node: root}
		if root.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(root.Content); i += 2 {
				switch root.Content[i].Value {
				case "apiVersion":
					o.APIVersion = root.Content[i+1].Value
				case "kind":
					o.Kind = root.Content[i+1].Value
				}
			}
		}
		out = append(out, o)
	}
}

// DecodeStrict decodes the object into v (a Kubernetes API type with JSON tags),
// refusing unknown fields; the error names the object's file:line.
func (o Object) DecodeStrict(v any) error {
	raw, err := yaml.Marshal(o.Node)
	if err != nil {
		return &fielderr.Error{File: o.File, Line: o.Line, Msg: err.Error()}
	}
	if err := sigyaml.UnmarshalStrict(raw, v); err != nil {
		msg := strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: ")
		return &fielderr.Error{File: o.File, Line: o.Line, Msg: msg}
	}
	return nil
}
