// Package policy is Ambit's authorization: Istio's PeerAuthentication and
// AuthorizationPolicy compiled from Istio's own API types into matchers, a Set
// that indexes them by scope, and an evaluator with Istio's order (any matching
// DENY rejects; else any matching ALLOW admits; else deny if an ALLOW policy
// applies). ztunnel asks it at L4; the waypoint will ask the same evaluator with
// the request's HTTP attributes filled in.
//
// The package knows no model types: a workload is its namespace and labels, a
// connection is an Input.
package policy

import (
	"fmt"
	"net/netip"
	"time"
)

// Meta names a policy object and orders it among its peers.
type Meta struct {
	Namespace string
	Name      string
	// Created breaks ties among equally specific PeerAuthentications (the
	// oldest wins). Objects without one (local files) are older than any with
	// one, in source order (Seq).
	Created time.Time
	Seq     int
	// Origin is where the object came from, for errors and dumps: "file:line"
	// in local mode, empty for the API server.
	Origin string
}

// Ref is "namespace/name".
func (m *Meta) Ref() string { return m.Namespace + "/" + m.Name }

// older reports whether m sorts before o: creation time, then source order,
// then name (Istio's rule for choosing among equally specific objects).
func (m *Meta) older(o *Meta) bool {
	if !m.Created.Equal(o.Created) {
		return m.Created.Before(o.Created)
	}
	if m.Seq != o.Seq {
		return m.Seq < o.Seq
	}
	return m.Ref() < o.Ref()
}

// Action is what an AuthorizationPolicy does with what it matches.
type Action uint8

const (
	ActionAllow Action = iota
	ActionDeny
	ActionAudit
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "ALLOW"
	case ActionDeny:
		return "DENY"
	case ActionAudit:
		return "AUDIT"
	}
	return fmt.Sprintf("Action(%d)", a)
}

// Scope is which workloads an object applies to.
type Scope struct {
	// Selector selects workloads by label; empty, the object applies to its whole
	// namespace (the whole mesh from the root namespace), as Istio treats both an
	// absent and an empty selector.
	Selector map[string]string
	// TargetRefs marks a policy attached to a Gateway, GatewayClass, Service or
	// ServiceEntry: the waypoint enforces it, ztunnel does not.
	TargetRefs []TargetRef
}

// TargetRef is one targetRefs entry.
type TargetRef struct{ Group, Kind, Name, Namespace string }

// Authorization is a compiled AuthorizationPolicy.
type Authorization struct {
	Meta
	Scope
	Action Action
	DryRun bool // istio.io/dry-run: evaluated and logged, not enforced
	Rules  []Rule
	// Invalid says why the object cannot be used as written. It then fails
	// closed: a DENY denies everything it selects, an ALLOW matches nothing (and
	// still makes its workloads deny by default), an AUDIT does nothing.
	Invalid error
	// Warnings name what ztunnel ignores (L7 fields) and what that does.
	Warnings []string
}

// Rule is one rules entry: one From, one To and all When must match. Nil From
// or To match anything.
type Rule struct {
	From []Source
	To   []Operation
	When []Condition
	http []string // the HTTP fields it uses, for L4's handling of them
}

// Source is one from.source: every field set must match.
type Source struct {
	Principals, NotPrincipals           Strings
	Namespaces, NotNamespaces           Strings
	ServiceAccounts, NotServiceAccounts []ServiceAccount
	TrustDomains, NotTrustDomains       Strings
	IPBlocks, NotIPBlocks               Prefixes
	// L7: the JWT's principal and the client address from X-Forwarded-For.
	RequestPrincipals, NotRequestPrincipals Strings
	RemoteIPBlocks, NotRemoteIPBlocks       Prefixes
}

// Operation is one to.operation: every field set must match.
type Operation struct {
	Ports, NotPorts Ports
	// L7.
	Hosts, NotHosts     Strings // case-insensitive
	Methods, NotMethods Strings
	Paths, NotPaths     Strings
}

// Condition is one when entry.
type Condition struct {
	Key               string
	attr              attr
	header            string // for request.headers[NAME], canonical
	Values, NotValues values
}

// ServiceAccount is one serviceAccounts entry.
type ServiceAccount struct{ Namespace, Name string }

// Mode is a PeerAuthentication mutual TLS mode.
type Mode uint8

const (
	ModeUnset Mode = iota
	ModeDisable
	ModePermissive
	ModeStrict
)

func (m Mode) String() string {
	switch m {
	case ModeUnset:
		return "UNSET"
	case ModeDisable:
		return "DISABLE"
	case ModePermissive:
		return "PERMISSIVE"
	case ModeStrict:
		return "STRICT"
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// PeerAuthentication is a compiled PeerAuthentication.
type PeerAuthentication struct {
	Meta
	Scope
	Mode  Mode
	Ports map[uint16]Mode // portLevelMtls, by the workload's port
	// Invalid says why the object cannot be used as written; it then fails
	// closed as STRICT for everything it selects.
	Invalid error
}

// Input is what the evaluator knows about one connection (or request).
type Input struct {
	// Principal is the peer's SPIFFE ID without "spiffe://"
	// ("td/ns/NS/sa/SA"); empty for plaintext, which no rule that needs a
	// principal, namespace or service account matches.
	Principal string
	SrcIP     netip.Addr
	DstIP     netip.Addr
	DstPort   uint16
	// HTTP is nil at L4 (ztunnel): a rule's HTTP fields are then handled as
	// Istio ambient does (see L4).
	HTTP *Request
}

// Request is the HTTP part of an Input (the waypoint).
type Request struct {
	Host, Method, Path string
	Headers            map[string][]string // canonical keys
	RequestPrincipal   string
	RemoteIP           netip.Addr
}

// Decision is the evaluator's answer.
type Decision struct {
	Allow bool
	// Policy is the deciding object ("namespace/name"), empty when none
	// decided (no policy applies, or none of the ALLOW policies matched:
	// Reason says which).
	Policy string
	Kind   string // "AuthorizationPolicy" or "PeerAuthentication"
	Rule   int    // the matching rule's index, -1 when none
	Reason string
	// Audit names the AUDIT policies that matched.
	Audit []string
	// DryRun is the decision had the dry-run policies been enforced, when any
	// applies.
	DryRun *Decision
}

// Kinds named in decisions.
const (
	KindAuthorization = "AuthorizationPolicy"
	KindPeerAuth      = "PeerAuthentication"
)

// String is the decision for logs: "allow"/"deny", and what decided.
func (d Decision) String() string {
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	if d.Policy == "" {
		return verdict + ": " + d.Reason
	}
	if d.Rule >= 0 {
		return fmt.Sprintf("%s: %s %s rule %d", verdict, d.Kind, d.Policy, d.Rule)
	}
	return fmt.Sprintf("%s: %s %s (%s)", verdict, d.Kind, d.Policy, d.Reason)
}
