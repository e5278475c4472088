package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
)

// ErrDenied is the reason of every connection refused or closed by policy.
var ErrDenied = errors.New("denied by policy")

// authorizePolicy is ztunnel's authorizer: the destination workload's
// PeerAuthentication (plaintext to a STRICT port is refused) and
// AuthorizationPolicies (policy.Applied.Evaluate). It records the decision in rec.
func (z *Ztunnel) authorizePolicy(snap *discovery.Snapshot, rec *record) error {
	d, ok := z.decide(snap, rec)
	if !ok {
		return nil
	}
	rec.decision = d
	if !rec.explain {
		z.logShadow(rec, d)
	}
	if d.Allow {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrDenied, d)
}

// decide evaluates rec against the policies of its destination in snap; ok is false
// when the destination is no workload of snap.
func (z *Ztunnel) decide(snap *discovery.Snapshot, rec *record) (policy.Decision, bool) {
	w := snap.WorkloadByUID(rec.DstWorkload.UID)
	if w == nil {
		return policy.Decision{}, false
	}
	applied := snap.PoliciesFor(w)
	if !rec.MutualTLS {
		if mode, by := applied.MTLS(rec.Dst.Port()); mode == policy.ModeStrict {
			d := policy.Decision{Policy: by.Ref(), Kind: policy.KindPeerAuth, Rule: -1,
				Reason: fmt.Sprintf("mTLS STRICT on port %d: plaintext refused", rec.Dst.Port())}
			if by.Invalid != nil {
				d.Reason = "invalid PeerAuthentication fails closed as STRICT: " + by.Invalid.Error()
			}
			return d, true
		}
	}
	in := policy.Input{SrcIP: rec.Src.Addr(), DstIP: rec.Dst.Addr(), DstPort: rec.Dst.Port()}
	in.Principal = principal(rec)
	return applied.Evaluate(&in), true
}

// principal is rec's source as policies name it ("td/ns/NS/sa/SA"), empty for
// plaintext.
func principal(rec *record) string {
	if !rec.MutualTLS {
		return ""
	}
	return strings.TrimPrefix(rec.SrcID.String(), "spiffe://")
}

// logShadow logs what AUDIT and dry-run policies made of rec; they never change
// the decision.
func (z *Ztunnel) logShadow(rec *record, d policy.Decision) {
	if len(d.Audit) == 0 && (d.DryRun == nil || d.DryRun.Allow == d.Allow && d.DryRun.Policy == d.Policy) {
		return
	}
	attrs := logAttrs(rec)
	attrs = append(attrs, slog.String(keyDecision, d.String()))
	if len(d.Audit) > 0 {
		attrs = append(attrs, slog.String(keyAudit, strings.Join(d.Audit, ",")))
	}
	if d.DryRun != nil {
		attrs = append(attrs, slog.String(keyDryRun, d.DryRun.String()))
	}
	z.log.LogAttrs(context.Background(), slog.LevelInfo, msgPolicyShadow, attrs...)
}

// recheckLoop re-authorizes the open connections to local pods whenever the model
// changes, closing those that no longer pass.
func (z *Ztunnel) recheckLoop(ctx context.Context) error {
	ch, cancel := z.store.Watch()
	defer cancel()
	last := z.store.Load()
	z.logWarnings(last.Policies, nil)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
		snap := z.store.Load()
		if snap == last {
			continue
		}
		if snap.Policies != last.Policies {
			z.logWarnings(snap.Policies, last.Policies)
		}
		// Without policies or waypoints every connection passes, as it did. (A binding
		// to a waypoint that is not declared is a waypoint problem.)
		idle := snap.Policies == nil && last.Policies == nil && !hasWaypoints(snap) && !hasWaypoints(last)
		last = snap
		if !idle {
			z.recheck(snap)
		}
	}
}

// logWarnings logs what ztunnel ignores of the AuthorizationPolicies in cur (HTTP
// fields), once per policy and warning: not again for those already in prev.
func (z *Ztunnel) logWarnings(cur, prev *policy.Set) {
	seen := map[string]bool{}
	for _, p := range prev.AuthorizationPolicies() {
		for _, w := range p.Warnings {
			seen[p.Ref()+"\x00"+w] = true
		}
	}
	for _, p := range cur.AuthorizationPolicies() {
		for _, w := range p.Warnings {
			if !seen[p.Ref()+"\x00"+w] {
				z.log.Warn(msgPolicyWarning, keyPolicy, p.Ref(), keyReason, w)
			}
		}
	}
}

func hasWaypoints(s *discovery.Snapshot) bool {
	return len(s.Waypoints) > 0 || len(s.WaypointProblems) > 0
}

// recheck closes each connection to a local pod that snap's policies deny, or whose
// destination is now behind a waypoint it did not come from.
func (z *Ztunnel) recheck(snap *discovery.Snapshot) {
	for _, rec := range z.conns.inbound() {
		w := snap.WorkloadByUID(rec.DstWorkload.UID)
		if w == nil {
			continue
		}
		var why slog.Attr
		if len(w.BehindWaypoints) > 0 && !z.cfg.AllowWaypointBypass && z.waypointPeer(snap, rec, w) == "" {
			why = slog.String(keyReason, bypassError(w).Error())
		} else if d, ok := z.decide(snap, rec); ok && !d.Allow {
			why = slog.String(keyDecision, d.String())
		} else {
			continue
		}
		if !rec.revoked.CompareAndSwap(false, true) {
			continue
		}
		z.m.denied(rec)
		attrs := logAttrs(rec)
		attrs = append(attrs, why)
		z.log.LogAttrs(context.Background(), slog.LevelWarn, msgPolicyClosed, attrs...)
		for i, c := range rec.closers {
			if i == 0 && !rec.MutualTLS {
				resetOnClose(c) // the plaintext client: as a refusal would
			}
			_ = c.Close()
		}
	}
}

// resetOnClose makes closing c send a TCP reset.
func resetOnClose(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
}

// DumpPolicy is one policy object in /config_dump.
type DumpPolicy struct {
	Kind   string `json:"kind"` // AuthorizationPolicy or PeerAuthentication
	Name   string `json:"name"` // namespace/name
	Origin string `json:"origin,omitempty"`
	// Scope is "mesh", "namespace", "selector k=v,..." or "targetRefs" (the
	// waypoint's, not enforced by ztunnel).
	Scope    string            `json:"scope"`
	Action   string            `json:"action,omitempty"`
	DryRun   bool              `json:"dryRun,omitempty"`
	Rules    int               `json:"rules,omitempty"`
	Mode     string            `json:"mode,omitempty"` // PeerAuthentication
	Ports    map[uint16]string `json:"portLevelMtls,omitempty"`
	Invalid  string            `json:"invalid,omitempty"`
	Warnings []string          `json:"warnings,omitempty"`
}

func dumpPolicies(s *policy.Set) []DumpPolicy {
	out := []DumpPolicy{}
	for _, p := range s.PeerAuthentications() {
		d := DumpPolicy{Kind: policy.KindPeerAuth, Name: p.Ref(), Origin: p.Origin,
			Scope: scopeOf(s, &p.Meta, &p.Scope), Mode: p.Mode.String()}
		for port, m := range p.Ports {
			if d.Ports == nil {
				d.Ports = map[uint16]string{}
			}
			d.Ports[port] = m.String()
		}
		if p.Invalid != nil {
			d.Invalid = p.Invalid.Error()
		}
		out = append(out, d)
	}
	for _, p := range s.AuthorizationPolicies() {
		d := DumpPolicy{Kind: policy.KindAuthorization, Name: p.Ref(), Origin: p.Origin,
			Scope: scopeOf(s, &p.Meta, &p.Scope), Action: p.Action.String(), DryRun: p.DryRun,
			Rules: len(p.Rules), Warnings: p.Warnings}
		if p.Invalid != nil {
			d.Invalid = p.Invalid.Error()
		}
		out = append(out, d)
	}
	return out
}

func scopeOf(s *policy.Set, m *policy.Meta, sc *policy.Scope) string {
	switch {
	case len(sc.TargetRefs) > 0:
		return "targetRefs"
	case len(sc.Selector) > 0:
		kv := make([]string, 0, len(sc.Selector))
		for k, v := range sc.Selector {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		return "selector " + strings.Join(kv, ",")
	case m.Namespace == s.RootNamespace():
		return "mesh"
	}
	return "namespace"
}

// appliedRefs names the policies in a.
func appliedRefs(a *policy.Applied) []string {
	var out []string
	for _, p := range a.PeerAuthentications() {
		out = append(out, policy.KindPeerAuth+" "+p.Ref())
	}
	for _, p := range a.Authorizations() {
		out = append(out, policy.KindAuthorization+" "+p.Ref())
	}
	return out
}
