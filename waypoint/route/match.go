package route

import (
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Path match kinds, in precedence order.
const (
	matchExact uint8 = iota
	matchPrefix
	matchRegex
	// matchGRPC is a GRPCRoute match; a port's entries are all of one kind.
	matchGRPC
)

// entry is one match of one rule: a rule with three matches gives three
// entries, each ranked on its own as the specification asks.
type entry struct {
	rule   *Rule
	kind   uint8
	path   string // Exact value, or PathPrefix value without its trailing '/'
	re     *regexp.Regexp
	method string
	header []valueMatch
	query  []valueMatch
	rpc    *rpcMatch // matchGRPC with a method match; nil matches any path

	// precedence keys
	pathLen int
	// serviceLen and methodLen are the lengths of a GRPCRoute match's service
	// and method (their expressions for RegularExpression).
	serviceLen, methodLen int
	created               time.Time
	route                 string
	ruleIdx               int
	matchIdx              int
}

// valueMatch matches a header (canonical name) or a query parameter value,
// exactly or by a full-match RE2 expression.
type valueMatch struct {
	name  string
	value string
	re    *regexp.Regexp
	host  bool // the "Host" header, read from Request.Host
}

func (v *valueMatch) matches(s string) bool {
	if v.re != nil {
		return v.re.MatchString(s)
	}
	return s == v.value
}

// Match picks the rule for req among all rules of all routes attached to this
// Service port, with the Gateway API precedence: Exact path, then the longest
// PathPrefix (in characters), then RegularExpression paths (an Ambit choice:
// after every prefix, longest expression first, as Istio ranks them), then a
// method match, the most header matches, the most query matches, the oldest
// route, the route's "namespace/name" in alphabetical order, and last the rule
// and match order. req.Path must be normalized. ok is false when no rule
// matches: the caller answers 404. Match does not allocate unless a query
// parameter needs unescaping.
func (r *Routes) Match(req *Request) (rule *Rule, ok bool) {
	if r == nil {
		return nil, false
	}
	for i := range r.entries {
		if e := &r.entries[i]; e.matches(req) {
			return e.rule, true
		}
	}
	return nil, false
}

func (e *entry) matches(req *Request) bool {
	p := req.Path
	switch e.kind {
	case matchExact:
		if p != e.path {
			return false
		}
	case matchPrefix:
		if !strings.HasPrefix(p, e.path) || len(p) > len(e.path) && p[len(e.path)] != '/' {
			return false
		}
	case matchRegex:
		if !e.re.MatchString(p) {
			return false
		}
	case matchGRPC:
		if e.rpc != nil && !e.rpc.matches(p) {
			return false
		}
	}
	if e.method != "" && req.Method != e.method {
		return false
	}
	for i := range e.header {
		if !headerMatches(&e.header[i], req) {
			return false
		}
	}
	for i := range e.query {
		if !queryMatches(&e.query[i], req.RawQuery) {
			return false
		}
	}
	return true
}

// headerMatches is true when one of the header's values matches: repeated
// header lines are matched one by one, never joined (CVE-2026-26308).
func headerMatches(v *valueMatch, req *Request) bool {
	if v.host {
		return v.matches(req.Host)
	}
	for _, s := range req.Header[v.name] {
		if v.matches(s) {
			return true
		}
	}
	return false
}

// queryMatches scans the raw query for v's name; any occurrence whose value
// matches is enough.
func queryMatches(v *valueMatch, q string) bool {
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, val, _ := strings.Cut(kv, "=")
		if k != v.name {
			uk, err := url.QueryUnescape(k)
			if err != nil || uk != v.name {
				continue
			}
		}
		uv, err := url.QueryUnescape(val)
		if err != nil {
			continue
		}
		if v.matches(uv) {
			return true
		}
	}
	return false
}

// before orders entries by precedence.
func (e *entry) before(o *entry) bool {
	if e.kind != o.kind {
		return e.kind < o.kind
	}
	if e.serviceLen != o.serviceLen {
		return e.serviceLen > o.serviceLen
	}
	if e.methodLen != o.methodLen {
		return e.methodLen > o.methodLen
	}
	if e.pathLen != o.pathLen {
		return e.pathLen > o.pathLen
	}
	if (e.method != "") != (o.method != "") {
		return e.method != ""
	}
	if len(e.header) != len(o.header) {
		return len(e.header) > len(o.header)
	}
	if len(e.query) != len(o.query) {
		return len(e.query) > len(o.query)
	}
	if !e.created.Equal(o.created) {
		return e.created.Before(o.created)
	}
	if e.route != o.route {
		return e.route < o.route
	}
	if e.ruleIdx != o.ruleIdx {
		return e.ruleIdx < o.ruleIdx
	}
	return e.matchIdx < o.matchIdx
}
