package route

import (
	"net/http"
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// decodeRoutes reads the HTTPRoutes of a multi-document YAML text; other kinds
// are skipped.
func decodeRoutes(tb testing.TB, text string) []*gatewayv1.HTTPRoute {
	tb.Helper()
	return decodeKind[gatewayv1.HTTPRoute](tb, text, KindHTTPRoute)
}

// decodeKind decodes, strictly, the objects of kind in a multi-document YAML text.
func decodeKind[T any](tb testing.TB, text, kind string) []*T {
	tb.Helper()
	var out []*T
	for _, doc := range strings.Split("\n"+text, "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			tb.Fatalf("decode: %v", err)
		}
		if meta.Kind != kind {
			continue
		}
		obj := new(T)
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			tb.Fatalf("decode %s: %v", kind, err)
		}
		out = append(out, obj)
	}
	return out
}

// testServices are the Services of the conformance mesh namespace plus a few
// in "default".
func testServices(ns, name string) (ServiceInfo, bool) {
	ports := []ServicePort{{"http", 80}, {"http-alt", 8080}, {"https", 443}, {"tcp", 9090}, {"grpc", 7070}}
	switch ns + "/" + name {
	case "gateway-conformance-mesh/echo", "gateway-conformance-mesh/echo-v1", "gateway-conformance-mesh/echo-v2",
		"default/svc", "default/v1", "default/v2", "default/v3", "other/svc":
		return ServiceInfo{Namespace: ns, Name: name, Ports: ports}, true
	}
	return ServiceInfo{}, false
}

// mustCompile compiles text and fails on any status that is not Accepted with
// resolved references.
func mustCompile(tb testing.TB, text string) *Table {
	tb.Helper()
	t, sts := Compile(decodeRoutes(tb, text), nil, testServices, nil)
	requireAccepted(tb, sts)
	return t
}

// requireAccepted fails unless every condition of every status is True.
func requireAccepted(tb testing.TB, sts []Status) {
	tb.Helper()
	for _, st := range sts {
		for _, p := range st.Parents {
			for _, c := range p.Conditions {
				if c.Status != "True" {
					tb.Fatalf("route %s/%s: %s=%s %s: %s", st.Namespace, st.Name, c.Type, c.Status, c.Reason, c.Message)
				}
			}
		}
	}
}

// req builds a Request; hdr is "Name: value" lines.
func req(method, path, query string, hdr ...string) *Request {
	h := http.Header{}
	for _, kv := range hdr {
		k, v, _ := strings.Cut(kv, ":")
		h.Add(k, strings.TrimSpace(v))
	}
	return &Request{Method: method, Scheme: "http", Host: "svc", Port: 80, Path: path, RawQuery: query, Header: h}
}

// backendOf returns the name of the backend picked for r with rnd 0, "" with no
// backend, "404" when nothing matches.
func backendOf(tb testing.TB, rs *Routes, r *Request) string {
	tb.Helper()
	rule, ok := rs.Match(r)
	if !ok {
		return "404"
	}
	b, ok := rule.Pick(0)
	if !ok {
		return ""
	}
	return b.Name
}
