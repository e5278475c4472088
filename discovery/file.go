package discovery

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxReportedErrors caps the errors Parse returns, so a badly broken large
// file yields a readable message.
const maxReportedErrors = 20

// LoadFile reads and parses the mesh model file at path.
func LoadFile(path string, opts EnrollmentOptions) (*Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mesh model: %w", err)
	}
	return Parse(path, data, opts)
}

// Parse parses a mesh model file (schema in docs/configuration.md) and
// builds its snapshot. filename is used only in error messages, which
// read "file:line: field.path: problem" (see FieldError); several errors are
// joined. Unknown fields, duplicate keys, YAML aliases and several
// documents are rejected.
func Parse(filename string, data []byte, opts EnrollmentOptions) (*Snapshot, error) {
	p := &parser{file: filename, lines: make(map[string]int)}
	in, ok := p.document(data)
	if ok && len(p.errs) == 0 {
		p.checkNamespacesDeclared(in)
		if _, err := Build(in, opts); err != nil {
			for _, fe := range FieldErrors(err) {
				fe.File = filename
				fe.Line = p.line(fe.Path)
				if fe.Ref != "" {
					fe.RefLine = p.line(fe.Ref)
				}
				p.errs = append(p.errs, fe)
			}
		}
	}
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
		if n := len(p.errs) - maxReportedErrors; n > 0 {
			p.errs = append(p.errs[:maxReportedErrors], &FieldError{File: filename, Msg: fmt.Sprintf("and %d more errors", n)})
		}
		return nil, p.errs.err()
	}
	return Build(in, opts)
}

type parser struct {
	file  string
	lines map[string]int // field path -> line, to place Build's errors
	errs  fieldErrors
}

func (p *parser) fail(n *yaml.Node, path, msg string) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Line: line, Path: path, Msg: msg})
}

// line returns the line of path, or of its closest recorded parent.
func (p *parser) line(path string) int {
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		var i int
		switch {
		case strings.HasSuffix(path, `"]`):
			i = strings.LastIndex(path, `["`)
		case strings.HasSuffix(path, "]"):
			i = strings.LastIndexByte(path, '[')
		default:
			i = strings.LastIndexByte(path, '.')
		}
		if i <= 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml error into a FieldError with its line.
func (p *parser) syntaxError(err error) {
	msg := err.Error()
	fe := &FieldError{File: p.file, Msg: strings.TrimPrefix(msg, "yaml: ")}
	if m := yamlLineErr.FindStringSubmatch(msg); m != nil {
		fe.Line, _ = strconv.Atoi(m[1])
		fe.Msg = m[2]
	}
	p.errs = append(p.errs, fe)
}

// decode reads one YAML document into a node tree, turning a panic of the
// YAML library into an error: Parse must survive any input.
func decode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: invalid YAML: %v", r)
		}
	}()
	return dec.Decode(n)
}

func (p *parser) document(data []byte) (Input, bool) {
	var in Input
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := decode(dec, &doc); {
	case errors.Is(err, io.EOF):
		return in, true // empty file: empty model
	case err != nil:
		p.syntaxError(err)
		return in, false
	}
	var extra yaml.Node
	switch err := decode(dec, &extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.syntaxError(err)
		return in, false
	default:
		p.fail(&extra, "", "only one YAML document is allowed")
		return in, false
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return in, true
		}
		root = root.Content[0]
	}
	if isNull(root) {
		return in, true
	}
	p.fields(root, "", func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "namespaces":
			p.seq(v, path, func(item *yaml.Node, path string) {
				in.Namespaces = append(in.Namespaces, p.namespace(item, path))
			})
		case "nodes":
			p.seq(v, path, func(item *yaml.Node, path string) {
				in.Nodes = append(in.Nodes, p.node(item, path))
			})
		case "workloads":
			p.seq(v, path, func(item *yaml.Node, path string) {
				in.Workloads = append(in.Workloads, p.workload(item, path))
			})
		case "services":
			p.seq(v, path, func(item *yaml.Node, path string) {
				in.Services = append(in.Services, p.service(item, path))
			})
		default:
			return false
		}
		return true
	})
	return in, true
}

func (p *parser) namespace(n *yaml.Node, path string) *Namespace {
	ns := &Namespace{}
	p.fields(n, path, func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "name":
			ns.Name = p.str(v, path)
		case "labels":
			ns.Labels = p.strMap(v, path)
		default:
			return false
		}
		return true
	})
	return ns
}

func (p *parser) node(n *yaml.Node, path string) *Node {
	node := &Node{}
	p.fields(n, path, func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "name":
			node.Name = p.str(v, path)
		case "addresses":
			node.Addresses = p.addrs(v, path)
		default:
			return false
		}
		return true
	})
	return node
}

func (p *parser) workload(n *yaml.Node, path string) *Workload {
	w := &Workload{}
	p.fields(n, path, func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "name":
			w.Name = p.str(v, path)
		case "namespace":
			w.Namespace = p.str(v, path)
		case "serviceAccount":
			w.ServiceAccount = p.str(v, path)
		case "node":
			w.Node = p.str(v, path)
		case "ips":
			w.IPs = p.addrs(v, path)
		case "labels":
			w.Labels = p.strMap(v, path)
		case "uid":
			w.UID = p.str(v, path)
		default:
			return false
		}
		return true
	})
	return w
}

func (p *parser) service(n *yaml.Node, path string) *Service {
	s := &Service{}
	p.fields(n, path, func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "name":
			s.Name = p.str(v, path)
		case "namespace":
			s.Namespace = p.str(v, path)
		case "hostname":
			s.Hostname = p.str(v, path)
		case "vips":
			s.VIPs = p.addrs(v, path)
		case "ports":
			p.seq(v, path, func(item *yaml.Node, path string) {
				s.Ports = append(s.Ports, p.servicePort(item, path))
			})
		case "selector":
			s.Selector = p.strMap(v, path)
		case "endpoints":
			p.seq(v, path, func(item *yaml.Node, path string) {
				s.Endpoints = append(s.Endpoints, p.endpoint(item, path))
			})
		default:
			return false
		}
		return true
	})
	return s
}

func (p *parser) servicePort(n *yaml.Node, path string) ServicePort {
	var sp ServicePort
	havePort := false
	p.fields(n, path, func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "name":
			sp.Name = p.str(v, path)
		case "port":
			havePort = true
			sp.Port = p.port(v, path)
		case "targetPort":
			if v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
				p.fail(v, path, fmt.Sprintf("%q: named target ports are not supported in the mesh model file, use a number", v.Value))
				return true
			}
			sp.TargetPort = p.port(v, path)
		default:
			return false
		}
		return true
	})
	if !havePort && n.Kind == yaml.MappingNode {
		p.fail(n, path+".port", msgRequired)
	}
	return sp
}

func (p *parser) endpoint(n *yaml.Node, path string) Endpoint {
	var ep Endpoint
	p.fields(n, path, func(key string, v *yaml.Node, path string) bool {
		switch key {
		case "workload":
			ep.WorkloadUID = p.str(v, path)
		case "ip":
			if s := p.str(v, path); s != "" {
				ep.Addr = p.addr(v, path, s)
			}
		default:
			return false
		}
		return true
	})
	return ep
}

// fields walks a mapping, calling f for each key with the value and its
// path; it rejects duplicate keys and those f does not know (returns false), and
// records each field's line.
func (p *parser) fields(n *yaml.Node, path string, f func(key string, v *yaml.Node, path string) bool) {
	if !p.kind(n, path, yaml.MappingNode) {
		return
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			p.fail(k, path, "keys must be strings, got "+describe(k))
			continue
		}
		fp := k.Value
		if path != "" {
			fp = path + "." + k.Value
		}
		if first, dup := seen[k.Value]; dup {
			p.fail(k, fp, fmt.Sprintf("set twice (first at line %d)", first))
			continue
		}
		seen[k.Value] = k.Line
		p.lines[fp] = k.Line
		if v.Kind == yaml.AliasNode {
			p.fail(v, fp, "YAML aliases are not supported")
			continue
		}
		if !f(k.Value, v, fp) {
			p.fail(k, fp, "unknown field")
		}
	}
}

// seq walks a list (null is an empty list), calling f for each item.
func (p *parser) seq(n *yaml.Node, path string, f func(item *yaml.Node, path string)) {
	if isNull(n) || !p.kind(n, path, yaml.SequenceNode) {
		return
	}
	for i, item := range n.Content {
		ip := fmt.Sprintf("%s[%d]", path, i)
		p.lines[ip] = item.Line
		if item.Kind == yaml.AliasNode {
			p.fail(item, ip, "YAML aliases are not supported")
			continue
		}
		f(item, ip)
	}
}

func (p *parser) kind(n *yaml.Node, path string, want yaml.Kind) bool {
	if n.Kind == want {
		return true
	}
	what := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list", yaml.ScalarNode: "a string"}[want]
	p.fail(n, path, fmt.Sprintf("must be %s, got %s", what, describe(n)))
	return false
}

// str returns a scalar's text; numbers and booleans are taken as written,
// null is "".
func (p *parser) str(n *yaml.Node, path string) string {
	if isNull(n) || !p.kind(n, path, yaml.ScalarNode) {
		return ""
	}
	return n.Value
}

func (p *parser) strMap(n *yaml.Node, path string) map[string]string {
	if isNull(n) {
		return nil
	}
	m := map[string]string{}
	if !p.kind(n, path, yaml.MappingNode) {
		return m
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			p.fail(k, path, "keys must be strings, got "+describe(k))
			continue
		}
		kp := labelPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			p.fail(k, kp, fmt.Sprintf("set twice (first at line %d)", first))
			continue
		}
		seen[k.Value] = k.Line
		p.lines[kp] = k.Line
		m[k.Value] = p.str(v, kp)
	}
	return m
}

func (p *parser) addrs(n *yaml.Node, path string) []netip.Addr {
	var out []netip.Addr
	p.seq(n, path, func(item *yaml.Node, path string) {
		if isNull(item) {
			p.fail(item, path, "must be an IP address, got null")
			return
		}
		if s := p.str(item, path); s != "" || item.Kind == yaml.ScalarNode {
			if a := p.addr(item, path, s); a.IsValid() {
				out = append(out, a)
			}
		}
	})
	return out
}

func (p *parser) addr(n *yaml.Node, path, s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		p.fail(n, path, fmt.Sprintf("%q is not an IP address", s))
		return netip.Addr{}
	}
	return a
}

func (p *parser) port(n *yaml.Node, path string) uint16 {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.fail(n, path, "must be a port number, got "+describe(n))
		return 0
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < 1 || v > 65535 {
		p.fail(n, path, fmt.Sprintf("%s is not a valid port (1-65535)", n.Value))
		return 0
	}
	return uint16(v)
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// describe names a node's kind for type errors.
func describe(n *yaml.Node) string {
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
		default:
			return strconv.Quote(n.Value)
		}
	}
	return "nothing"
}

// checkNamespacesDeclared catches misspelt namespaces: once a file declares
// namespaces, workloads and services must be in one of them.
func (p *parser) checkNamespacesDeclared(in Input) {
	if len(in.Namespaces) == 0 {
		return
	}
	declared := make(map[string]bool, len(in.Namespaces))
	for _, ns := range in.Namespaces {
		declared[ns.Name] = true
	}
	check := func(path, ns string) {
		if ns != "" && !declared[ns] {
			p.errs = append(p.errs, &FieldError{File: p.file, Line: p.line(path), Path: path,
				Msg: fmt.Sprintf("namespace %q is not declared in namespaces", ns)})
		}
	}
	for i, w := range in.Workloads {
		check(fmt.Sprintf("workloads[%d].namespace", i), w.Namespace)
	}
	for i, s := range in.Services {
		check(fmt.Sprintf("services[%d].namespace", i), s.Namespace)
	}
}
