package discovery

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/ambitmesh/ambit/internal/yamldoc"
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
	return parse(filename, data, opts, manifests{})
}

// parse is Parse with what the manifest files declare.
func parse(filename string, data []byte, opts EnrollmentOptions, m manifests) (*Snapshot, error) {
	p := &parser{file: filename, lines: make(map[string]int)}
	in, ok := p.document(data)
	in.Policies, in.PolicyProblems = m.policies, m.policyProblems
	in.Waypoints, in.WaypointProblems, in.Routes = m.waypoints, m.waypointProblems, m.routes
	in.DestinationRules, in.TrafficProblems = m.destinationRules, m.trafficProblems
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
		return nil, p.errs.Err()
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

// syntaxError records a YAML syntax error with its line.
func (p *parser) syntaxError(err error) { p.errs = append(p.errs, yamldoc.SyntaxError(p.file, err)) }

func (p *parser) document(data []byte) (Input, bool) {
	var in Input
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := yamldoc.Decode(dec, &doc); {
	case errors.Is(err, io.EOF):
		return in, true // empty file: empty model
	case err != nil:
		p.syntaxError(err)
		return in, false
	}
	var extra yaml.Node
	switch err := yamldoc.Decode(dec, &extra); {
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
	p.fields(root, "", fieldSet{
		"namespaces": list(p, &in.Namespaces, p.namespace),
		"nodes":      list(p, &in.Nodes, p.node),
		"workloads":  list(p, &in.Workloads, p.workload),
		"services":   list(p, &in.Services, p.service),
	})
	return in, true
}

func (p *parser) namespace(n *yaml.Node, path string) *Namespace {
	ns := &Namespace{}
	p.fields(n, path, fieldSet{"name": p.toStr(&ns.Name), "labels": p.toStrMap(&ns.Labels)})
	return ns
}

func (p *parser) node(n *yaml.Node, path string) *Node {
	node := &Node{}
	p.fields(n, path, fieldSet{
		"name":      p.toStr(&node.Name),
		"addresses": p.toAddrs(&node.Addresses),
		"locality":  p.toLocality(&node.Locality),
	})
	return node
}

func (p *parser) workload(n *yaml.Node, path string) *Workload {
	w := &Workload{}
	p.fields(n, path, fieldSet{
		"name":           p.toStr(&w.Name),
		"namespace":      p.toStr(&w.Namespace),
		"serviceAccount": p.toStr(&w.ServiceAccount),
		"node":           p.toStr(&w.Node),
		"ips":            p.toAddrs(&w.IPs),
		"labels":         p.toStrMap(&w.Labels),
		"uid":            p.toStr(&w.UID),
		"locality":       p.toLocality(&w.Locality),
	})
	return w
}

func (p *parser) service(n *yaml.Node, path string) *Service {
	s := &Service{}
	p.fields(n, path, fieldSet{
		"name":      p.toStr(&s.Name),
		"namespace": p.toStr(&s.Namespace),
		"hostname":  p.toStr(&s.Hostname),
		"vips":      p.toAddrs(&s.VIPs),
		"ports":     list(p, &s.Ports, p.servicePort),
		"selector":  p.toStrMap(&s.Selector),
		"labels":    p.toStrMap(&s.Labels),
		"endpoints": list(p, &s.Endpoints, p.endpoint),

		"trafficDistribution": p.toStr(&s.TrafficDistribution),
	})
	return s
}

func (p *parser) servicePort(n *yaml.Node, path string) ServicePort {
	var sp ServicePort
	havePort := false
	p.fields(n, path, fieldSet{
		"name":        p.toStr(&sp.Name),
		"appProtocol": p.toStr(&sp.AppProtocol),
		"port": func(v *yaml.Node, path string) {
			havePort = true
			sp.Port = p.port(v, path)
		},
		"targetPort": func(v *yaml.Node, path string) {
			if v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
				p.fail(v, path, fmt.Sprintf("%q: named target ports are not supported in the mesh model file, use a number", v.Value))
				return
			}
			sp.TargetPort = p.port(v, path)
		},
	})
	if !havePort && n.Kind == yaml.MappingNode {
		p.fail(n, path+".port", msgRequired)
	}
	return sp
}

func (p *parser) endpoint(n *yaml.Node, path string) Endpoint {
	var ep Endpoint
	p.fields(n, path, fieldSet{
		"workload": p.toStr(&ep.WorkloadUID),
		"ip": func(v *yaml.Node, path string) {
			if s := p.str(v, path); s != "" {
				ep.Addr = p.addr(v, path, s)
			}
		},
	})
	return ep
}

// fieldSet maps the keys a mapping may have to the parsers of their values.
type fieldSet map[string]func(v *yaml.Node, path string)

func (p *parser) toStr(dst *string) func(*yaml.Node, string) {
	return func(v *yaml.Node, path string) { *dst = p.str(v, path) }
}

func (p *parser) toStrMap(dst *map[string]string) func(*yaml.Node, string) {
	return func(v *yaml.Node, path string) { *dst = p.strMap(v, path) }
}

// toLocality parses {region, zone, subzone}; Build checks the values.
func (p *parser) toLocality(dst *Locality) func(*yaml.Node, string) {
	return func(v *yaml.Node, path string) {
		if isNull(v) {
			return
		}
		p.fields(v, path, fieldSet{"region": p.toStr(&dst.Region), "zone": p.toStr(&dst.Zone), "subzone": p.toStr(&dst.Subzone)})
	}
}

func (p *parser) toAddrs(dst *[]netip.Addr) func(*yaml.Node, string) {
	return func(v *yaml.Node, path string) { *dst = p.addrs(v, path) }
}

// list parses a list whose items item parses, appending them to dst.
func list[T any](p *parser, dst *[]T, item func(*yaml.Node, string) T) func(*yaml.Node, string) {
	return func(v *yaml.Node, path string) {
		p.seq(v, path, func(n *yaml.Node, path string) { *dst = append(*dst, item(n, path)) })
	}
}

// fields walks a mapping, parsing each key's value with its entry in known; it
// rejects duplicate keys and those known lacks, and records each field's line.
func (p *parser) fields(n *yaml.Node, path string, known fieldSet) {
	if !p.kind(n, path, yaml.MappingNode) {
		return
	}
	p.entries(n, path, fieldPath, func(k, v *yaml.Node, fp string) {
		if v.Kind == yaml.AliasNode {
			p.fail(v, fp, "YAML aliases are not supported")
			return
		}
		parse, ok := known[k.Value]
		if !ok {
			p.fail(k, fp, "unknown field")
			return
		}
		parse(v, fp)
	})
}

// entries calls f for each entry of mapping n with the path keyPath gives its key,
// rejecting keys that are not strings and duplicate ones, and records each key's line.
func (p *parser) entries(n *yaml.Node, path string, keyPath func(path, key string) string, f func(k, v *yaml.Node, path string)) {
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			p.fail(k, path, "keys must be strings, got "+yamldoc.Describe(k))
			continue
		}
		kp := keyPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			p.fail(k, kp, fmt.Sprintf("set twice (first at line %d)", first))
			continue
		}
		seen[k.Value] = k.Line
		p.lines[kp] = k.Line
		f(k, v, kp)
	}
}

// fieldPath names a field of the mapping at path, e.g. `services[0].name`.
func fieldPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
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
	p.fail(n, path, fmt.Sprintf("must be %s, got %s", what, yamldoc.Describe(n)))
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
	p.entries(n, path, labelPath, func(k, v *yaml.Node, kp string) { m[k.Value] = p.str(v, kp) })
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
		p.fail(n, path, "must be a port number, got "+yamldoc.Describe(n))
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
