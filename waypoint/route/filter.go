package route

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// headerFilter is a compiled RequestHeaderModifier or ResponseHeaderModifier;
// names are canonical.
type headerFilter struct {
	set, add []header
	remove   []string
}

type header struct{ name, value string }

// apply sets, then adds, then removes: a name both set and removed ends up absent.
func (f *headerFilter) apply(h http.Header) {
	if h == nil {
		return
	}
	for _, kv := range f.set {
		h[kv.name] = []string{kv.value}
	}
	for _, kv := range f.add {
		h[kv.name] = append(h[kv.name], kv.value)
	}
	for _, n := range f.remove {
		delete(h, n)
	}
}

func (f *headerFilter) empty() bool {
	return len(f.set) == 0 && len(f.add) == 0 && len(f.remove) == 0
}

type filterKind uint8

const (
	filterHeaders filterKind = iota
	filterRewrite
	filterRedirect
)

// requestFilter is one request-side filter of a rule, in spec order.
type requestFilter struct {
	kind    filterKind
	headers headerFilter
	// hostname replaces the authority (rewrite) or the Location host (redirect).
	hostname string
	path     pathModifier
	// redirect only
	scheme string
	port   uint16
	code   int
}

type pathKind uint8

const (
	pathKeep pathKind = iota
	pathFull
	pathPrefix
)

type pathModifier struct {
	kind  pathKind
	value string
}

// Redirect is the response to answer instead of forwarding.
type Redirect struct {
	StatusCode int
	Location   string
}

// ApplyRequest runs the rule's request filters on req, in the order they are
// written: header modifiers change req.Header, URLRewrite changes req.Host and
// req.Path. A RequestRedirect stops the chain and returns the redirect to answer
// (then the caller applies ApplyResponse to the redirect's headers and forwards
// nothing). Mirrors are not run here; see Rule.Mirrors.
func (r *Rule) ApplyRequest(req *Request) *Redirect {
	for i := range r.request {
		f := &r.request[i]
		switch f.kind {
		case filterHeaders:
			f.headers.apply(req.Header)
		case filterRewrite:
			if f.hostname != "" {
				req.Host = f.hostname
			}
			req.Path = r.modifyPath(f.path, req.Path)
		case filterRedirect:
			return r.redirect(f, req)
		}
	}
	return nil
}

// ApplyResponse runs the rule's ResponseHeaderModifier filters on the response
// headers (also on a redirect's).
func (r *Rule) ApplyResponse(h http.Header) {
	for i := range r.response {
		r.response[i].apply(h)
	}
}

func (r *Rule) modifyPath(m pathModifier, path string) string {
	switch m.kind {
	case pathFull:
		return m.value
	case pathPrefix:
		return replacePrefix(path, r.prefix, m.value)
	}
	return path
}

// replacePrefix swaps the matched prefix (without trailing '/') of path for
// repl, element-wise, with the table of HTTPPathModifier: "/foo/bar" with
// prefix "/foo" and repl "/xyz" or "/xyz/" is "/xyz/bar", "/foo/" is "/xyz/",
// and an empty or "/" repl on "/foo" is "/".
func replacePrefix(path, prefix, repl string) string {
	rest := path
	if strings.HasPrefix(path, prefix) {
		rest = path[len(prefix):]
	}
	repl = strings.TrimSuffix(repl, "/")
	if repl == "" {
		if rest == "" {
			return "/"
		}
		return rest
	}
	return repl + rest
}

func (r *Rule) redirect(f *requestFilter, req *Request) *Redirect {
	scheme := req.Scheme
	if scheme == "" {
		scheme = "http"
	}
	host := f.hostname
	if host == "" {
		host = hostOnly(req.Host)
	}
	port := req.Port
	switch {
	case f.port != 0:
		port = f.port
	case f.scheme != "":
		// A scheme change without a port uses the scheme's well-known port.
		port = 80
		if f.scheme == "https" {
			port = 443
		}
	}
	if f.scheme != "" {
		scheme = f.scheme
	}
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	if strings.IndexByte(host, ':') >= 0 {
		b.WriteByte('[')
		b.WriteString(host)
		b.WriteByte(']')
	} else {
		b.WriteString(host)
	}
	if !(scheme == "http" && port == 80 || scheme == "https" && port == 443) && port != 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(int(port)))
	}
	b.WriteString(r.modifyPath(f.path, req.Path))
	if req.RawQuery != "" {
		b.WriteByte('?')
		b.WriteString(req.RawQuery)
	}
	return &Redirect{StatusCode: f.code, Location: b.String()}
}

// hostOnly strips the port, and an IPv6 address's brackets, from an authority.
func hostOnly(authority string) string {
	if h, _, err := net.SplitHostPort(authority); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]")
}
