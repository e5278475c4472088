package ztunnel

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/policy"
)

var (
	errUnknownWorkload   = errors.New("no such workload")
	errAmbiguousWorkload = errors.New("several workloads have that name; give namespace/name")
)

// ExplainQuery asks what this node would decide for a connection to one of its
// workloads.
type ExplainQuery struct {
	// Src is the client: a workload's IP, "namespace/name" (or a name that is
	// unique in the model), or an address outside the mesh.
	Src string
	// Dst is a local workload's "IP:port" or "namespace/name:port".
	Dst string
	// Plaintext asks about plaintext from a mesh source (the :15006 path); a
	// source that is no enrolled workload always sends plaintext.
	Plaintext bool
}

// Explanation is what this node would do with the connection an ExplainQuery
// names (/policy/explain).
type Explanation struct {
	// Path is the connection's direction at this node: "inbound" (HBONE from
	// another node), "inbound_plaintext" or "local" (same node).
	Path        string `json:"path"`
	Src         string `json:"src"`
	SrcWorkload string `json:"srcWorkload,omitempty"`
	// Principal is the source as policies see it ("td/ns/NS/sa/SA"); empty
	// for plaintext, which has none.
	Principal   string `json:"principal,omitempty"`
	Dst         string `json:"dst"`
	DstWorkload string `json:"dstWorkload"`
	DstIdentity string `json:"dstIdentity,omitempty"`
	Security    string `json:"security"` // mutual_tls or none
	// MTLSMode is the destination port's PeerAuthentication mode, MTLSModeBy
	// the object that set it (empty: Istio's default, PERMISSIVE).
	MTLSMode   string `json:"mtlsMode"`
	MTLSModeBy string `json:"mtlsModeBy,omitempty"`
	// Allowed says whether the connection would be delivered.
	Allowed bool `json:"allowed"`
	// Decision is the policies' (nil when the connection is refused before
	// they are asked: Refused says why).
	Decision *DecisionInfo `json:"decision,omitempty"`
	Refused  string        `json:"refused,omitempty"`
	// Policies are those in force for the destination ("kind namespace/name").
	Policies []string `json:"policies,omitempty"`
}

// DecisionInfo is a policy.Decision as JSON.
type DecisionInfo struct {
	Allow  bool     `json:"allow"`
	Kind   string   `json:"kind,omitempty"`
	Policy string   `json:"policy,omitempty"` // namespace/name
	Rule   int      `json:"rule"`             // -1: no rule
	Reason string   `json:"reason,omitempty"`
	Audit  []string `json:"audit,omitempty"`
	// DryRun is the decision had the dry-run policies been enforced.
	DryRun *DecisionInfo `json:"dryRun,omitempty"`
	// Text is the decision as the access log writes it.
	Text string `json:"text"`
}

func decisionInfo(d policy.Decision) *DecisionInfo {
	di := &DecisionInfo{Allow: d.Allow, Kind: d.Kind, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason,
		Audit: d.Audit, Text: d.String()}
	if d.DryRun != nil {
		di.DryRun = decisionInfo(*d.DryRun)
	}
	return di
}

// Explain answers q from the live model as a real connection would be answered:
// the record is built as the connection's entry point builds it, then route and
// the authorizer complete and decide it. Nothing is dialed and nothing logged.
// An error means q cannot be answered (bad or unknown names, a destination that
// is not this node's).
func (z *Ztunnel) Explain(q ExplainQuery) (Explanation, error) {
	snap := z.store.Load()
	src, srcW, err := explainSrc(snap, q.Src)
	if err != nil {
		return Explanation{}, err
	}
	dst, err := explainDst(snap, q.Dst)
	if err != nil {
		return Explanation{}, err
	}
	if _, err := z.localWorkload(snap, dst.Addr()); err != nil {
		if w := snap.WorkloadByIP(dst.Addr()); w != nil && w.Node != z.cfg.NodeName {
			return Explanation{}, fmt.Errorf("dst %w (%s/%s runs on node %q, whose ztunnel decides)", err, w.Namespace, w.Name, w.Node)
		}
		return Explanation{}, fmt.Errorf("dst %w", err)
	}
	// The client's port is unknown and no policy reads it.
	from := netip.AddrPortFrom(src, 0)
	var rec *record
	switch {
	case q.Plaintext || srcW == nil || srcW.Protocol != discovery.ProtocolHBONE:
		rec = newRecord(dirInboundPlain, from, dst)
	case srcW.Enrolled && srcW.Node == z.cfg.NodeName:
		rec = newRecord(dirOutbound, from, dst) // captured at the pod; route serves it as same node
	default:
		id, err := identity.WorkloadID(z.td, srcW.Namespace, srcW.ServiceAccount)
		if err != nil {
			return Explanation{}, fmt.Errorf("src %s/%s: %w", srcW.Namespace, srcW.Name, err)
		}
		// As the source's ztunnel (or a waypoint's pod, from any node) sends it: its
		// certificate, the client's address forwarded.
		rec = hboneRecord(id, from, netip.AddrPortFrom(dst.Addr(), PortHBONE), dst, from)
	}
	rec.explain = true
	d := z.route(snap, rec)

	e := Explanation{
		Path:        rec.Direction.String(),
		Src:         rec.Src.Addr().String(),
		SrcWorkload: rec.SrcWorkload.String(),
		Principal:   principal(rec),
		Dst:         rec.Dst.String(),
		DstWorkload: rec.DstWorkload.String(),
		Security:    rec.security(),
		Allowed:     d.action == actDeliver,
	}
	if !rec.DstID.IsZero() {
		e.DstIdentity = rec.DstID.String()
	}
	if w := snap.WorkloadByUID(rec.DstWorkload.UID); w != nil {
		applied := snap.PoliciesFor(w)
		mode, by := applied.MTLS(rec.Dst.Port())
		e.MTLSMode = mode.String()
		if by != nil {
			e.MTLSModeBy = by.Ref()
		}
		e.Policies = appliedRefs(applied)
	}
	if rec.decision.Policy != "" || rec.decision.Reason != "" {
		e.Decision = decisionInfo(rec.decision)
	}
	if d.action == actRefuse && !errors.Is(d.reason, ErrDenied) {
		e.Refused = fmt.Sprintf("%d %s: %v", d.status, http.StatusText(d.status), d.reason)
	}
	return e, nil
}

// explainSrc is the client's address and, when it is one, its workload.
func explainSrc(snap *discovery.Snapshot, s string) (netip.Addr, *discovery.Workload, error) {
	if s == "" {
		return netip.Addr{}, nil, errors.New("src is required: a workload IP, namespace/name, or an address outside the mesh")
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		ip = ip.Unmap()
		return ip, snap.WorkloadByIP(ip), nil
	}
	w, err := workloadNamed(snap, s)
	if err != nil {
		return netip.Addr{}, nil, fmt.Errorf("src %q: %w", s, err)
	}
	return w.IPs[0], w, nil
}

// explainDst is the destination address.
func explainDst(snap *discovery.Snapshot, s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, ':')
	if s == "" || i < 0 {
		return netip.AddrPort{}, fmt.Errorf("dst %q: want IP:port or namespace/name:port", s)
	}
	host, ps := strings.TrimSuffix(strings.TrimPrefix(s[:i], "["), "]"), s[i+1:]
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return netip.AddrPort{}, fmt.Errorf("dst %q: port %q: want 1-65535", s, ps)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
	}
	w, err := workloadNamed(snap, host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dst %q: %w", s, err)
	}
	return netip.AddrPortFrom(w.IPs[0], uint16(port)), nil
}

// workloadNamed finds "namespace/name", or a name only one workload has; the
// workload has an address.
func workloadNamed(snap *discovery.Snapshot, s string) (*discovery.Workload, error) {
	ns, name, qualified := strings.Cut(s, "/")
	if !qualified {
		ns, name = "", s
	}
	var found []*discovery.Workload
	for _, w := range snap.Workloads {
		if w.Name == name && (!qualified || w.Namespace == ns) {
			found = append(found, w)
		}
	}
	switch {
	case len(found) == 0:
		return nil, errUnknownWorkload
	case len(found) > 1:
		refs := make([]string, len(found))
		for i, w := range found {
			refs[i] = w.Namespace + "/" + w.Name
		}
		return nil, fmt.Errorf("%w (%s)", errAmbiguousWorkload, strings.Join(refs, ", "))
	case len(found[0].IPs) == 0:
		return nil, fmt.Errorf("%s/%s has no IP address", found[0].Namespace, found[0].Name)
	}
	return found[0], nil
}

// serveExplain is GET /policy/explain?src=...&dst=...[&plaintext=true].
func (z *Ztunnel) serveExplain(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	v := r.URL.Query()
	q := ExplainQuery{Src: v.Get("src"), Dst: v.Get("dst")}
	if s := v.Get("plaintext"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			http.Error(w, fmt.Sprintf("plaintext %q: want true or false", s), http.StatusBadRequest)
			return
		}
		q.Plaintext = b
	}
	e, err := z.Explain(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, e)
}
