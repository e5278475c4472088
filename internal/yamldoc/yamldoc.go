// Package yamldoc reads YAML documents as node trees, whatever the input: a panic
// of the YAML library becomes an error, and syntax errors become field errors with
// their line.
package yamldoc

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ambitmesh/ambit/internal/fielderr"
)

// Decode reads the next document of dec into n (io.EOF after the last).
func Decode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: invalid YAML: %v", r)
		}
	}()
	return dec.Decode(n)
}

var lineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// SyntaxError turns an error of Decode into a field error of file, with its line
// when the YAML library gives one.
func SyntaxError(file string, err error) *fielderr.Error {
	msg := err.Error()
	fe := &fielderr.Error{File: file, Msg: strings.TrimPrefix(msg, "yaml: ")}
	if m := lineErr.FindStringSubmatch(msg); m != nil {
		fe.Line, _ = strconv.Atoi(m[1])
		fe.Msg = m[2]
	}
	return fe
}

// Describe names what n is, for errors: "a mapping", "a list", "the number 80", a
// quoted string...
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return strconv.Quote(n.Value)
	}
	return "nothing"
}
