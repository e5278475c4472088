package ztunnel

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
)

var (
	errNotLocalSource = errors.New("source is not an enrolled workload of this node")
	errNotLocalDest   = errors.New("destination is not an enrolled workload of this node")
	errAuthorityMatch = errors.New("authority does not name the workload this connection was sent to")
	errLoop           = errors.New("destination is this node (loop)")
	errNoEndpoint     = errors.New("service has no endpoints")
	errEndpointsTried = errors.New("every endpoint of the service was tried")
	errUnknownPort    = errors.New("service has no such port")
	errDirection      = errors.New("connection of no known direction")
	// The waypoint refusals read "waypoint apps/wp is not declared", "... has no ready
	// pod", "destination apps/echo is behind waypoint apps/wp: only the waypoint may connect".
	errWaypointUndeclared = errors.New("is not declared")
	errWaypointNoPod      = errors.New("has no ready pod")
	errBehindWaypoint     = errors.New("only the waypoint may connect")
)

// action is what a decision does with a connection.
type action uint8

const (
	actRefuse      action = iota // the zero decision refuses: fail closed
	actHBONE                     // tunnel to the destination node's ztunnel
	actPassthrough               // connect to the destination directly, from the node
	actDeliver                   // connect to a local pod
)

// decision is route's answer for one connection.
type decision struct {
	action action
	// target is where to connect: the pod behind the peer (the CONNECT authority),
	// the passthrough destination, or the local pod.
	target netip.AddrPort
	// peer is, for actHBONE, the HBONE address of the destination's ztunnel.
	peer netip.AddrPort
	// bind is, for actDeliver, the client address to connect from (IP_TRANSPARENT,
	// the pod sees its real client); zero connects from the node.
	bind netip.Addr
	// status and reason say why, for actRefuse: the HBONE status an inbound stream
	// is answered with, and the error logged.
	status int
	reason error
}

func refusal(status int, reason error) decision {
	return decision{action: actRefuse, status: status, reason: reason}
}

// authorizer decides whether a connection to a local pod may proceed: it returns nil to
// allow it, or the reason it is denied. It sees the completed record (workloads,
// identities, addresses, service) and the model it was resolved in.
type authorizer func(snap *discovery.Snapshot, rec *record) error

// route is the one decision point: every entry point (outbound capture, inbound HBONE,
// inbound plaintext; same node is outbound to a local pod) builds the connection's
// record from what its transport says and asks route what to do. route completes the
// record (workloads, identities, service, final destination) and, on every path to a
// local pod, asks the authorizer (toLocal).
func (z *Ztunnel) route(snap *discovery.Snapshot, rec *record) decision {
	switch rec.Direction {
	case dirOutbound:
		return z.routeOutbound(snap, rec)
	case dirInboundHBONE:
		return z.routeInboundHBONE(snap, rec)
	case dirInboundPlain:
		return z.routeInboundPlain(snap, rec)
	}
	return refusal(http.StatusBadRequest, fmt.Errorf("%s: %w", rec.Direction, errDirection))
}

// routeOutbound: a local enrolled pod's connection goes over HBONE to a mesh
// destination on another node, to a mesh destination on this node directly (same
// node), and out of the mesh by passthrough.
func (z *Ztunnel) routeOutbound(snap *discovery.Snapshot, rec *record) decision {
	srcW := snap.WorkloadByIP(rec.Src.Addr())
	if srcW == nil || srcW.Node != z.cfg.NodeName || !srcW.Enrolled {
		return refusal(http.StatusBadRequest, errNotLocalSource)
	}
	rec.SrcWorkload = refOf(srcW)
	srcID, err := identity.WorkloadID(z.td, srcW.Namespace, srcW.ServiceAccount)
	if err != nil {
		return refusal(http.StatusBadRequest, err)
	}
	rec.SrcID = srcID

	r, err := z.resolve(snap, rec, srcW)
	if err != nil {
		return refusal(http.StatusBadRequest, err)
	}
	rec.Service = serviceOf(r.svc)
	rec.Dst = r.target
	rec.DstWorkload = refOf(r.dstW)
	if !r.mesh {
		// Outside the mesh. Dial from the node's own address so replies route back
		// without capture.
		return decision{action: actPassthrough, target: r.target}
	}
	// Pooled tunnels do not re-handshake: check the source identity is still held.
	if err := z.identityHeld(srcID); err != nil {
		return refusal(http.StatusServiceUnavailable, err)
	}
	if r.waypoint != "" {
		return z.toWaypoint(snap, rec, r.waypoint)
	}
	if err := z.setDst(rec, r.dstW); err != nil {
		return refusal(http.StatusBadRequest, err)
	}
	rec.MutualTLS = true // HBONE; on the same node this ztunnel authenticates both ends
	if r.dstW.Node == z.cfg.NodeName && r.dstW.Enrolled {
		// Same node: no capture point sits between us and a local pod, so serve the
		// destination side here, as an inbound connection would be. (A waypoint's pod
		// is never captured: it terminates HBONE itself and is dialed like a remote one.)
		rec.Direction = dirLocal
		if err := z.checkWaypoint(snap, rec, r.dstW); err != nil {
			return refusal(http.StatusUnauthorized, err)
		}
		return z.toLocal(snap, rec, rec.Src.Addr())
	}
	rec.HBONEAddr = netip.AddrPortFrom(r.target.Addr(), PortHBONE)
	return decision{action: actHBONE, target: r.target, peer: rec.HBONEAddr}
}

// routeInboundHBONE: a CONNECT stream to a local pod, whose tunnel was sent to the
// pod's own address (rec.HBONEAddr) and authenticated as rec.SrcID.
func (z *Ztunnel) routeInboundHBONE(snap *discovery.Snapshot, rec *record) decision {
	dstW, err := z.localDst(snap, rec, rec.HBONEAddr.Addr())
	if err != nil {
		return refusal(http.StatusBadRequest, err)
	}
	// A pooled HBONE connection was authenticated once, at its handshake. Each new stream
	// also needs the destination identity to still be held: a revoked identity (say, its
	// SPIRE entry was deleted) must not keep accepting connections over old tunnels.
	if err := z.identityHeld(rec.DstID); err != nil {
		return refusal(http.StatusServiceUnavailable, err)
	}
	if !hasIP(dstW, rec.Dst.Addr()) {
		return refusal(http.StatusBadRequest, fmt.Errorf("%s for %s: %w", rec.Dst, rec.HBONEAddr.Addr(), errAuthorityMatch))
	}
	if err := z.checkWaypoint(snap, rec, dstW); err != nil {
		return refusal(http.StatusUnauthorized, err)
	}
	// Preserve the client's address only when the authenticated peer really owns it, or
	// is the waypoint this pod is behind relaying its own client; otherwise a compromised
	// node could make traffic appear to come from any pod.
	var bind netip.Addr
	if fwd := rec.claimedSrc; fwd.IsValid() {
		if rec.Waypoint != "" {
			if fwd.Addr().Is4() == rec.Dst.Addr().Is4() {
				bind = fwd.Addr()
				rec.Src = fwd
				rec.SrcWorkload = refOf(snap.WorkloadByIP(fwd.Addr())) // the waypoint's word: a name only
			}
		} else if fw := snap.WorkloadByIP(fwd.Addr()); fw != nil {
			if id, err := identity.WorkloadID(z.td, fw.Namespace, fw.ServiceAccount); err == nil && id == rec.SrcID {
				bind = fwd.Addr()
				rec.Src = fwd
				rec.SrcWorkload = refOf(fw)
			}
		}
		if !bind.IsValid() {
			z.log.Warn(msgUntrustedFwd, keySrc, fwd.String(), keySrcIdentity, rec.SrcID.String())
		}
	}
	return z.toLocal(snap, rec, bind)
}

// routeInboundPlain: plaintext TCP from outside the mesh to a local enrolled pod,
// delivered from the client's own address.
func (z *Ztunnel) routeInboundPlain(snap *discovery.Snapshot, rec *record) decision {
	dstW, err := z.localDst(snap, rec, rec.Dst.Addr())
	if err != nil {
		return refusal(http.StatusBadRequest, err)
	}
	rec.SrcWorkload = refOf(snap.WorkloadByIP(rec.Src.Addr())) // unauthenticated: a name only
	if err := z.checkWaypoint(snap, rec, dstW); err != nil {
		return refusal(http.StatusUnauthorized, err)
	}
	return z.toLocal(snap, rec, rec.Src.Addr())
}

// toWaypoint sends rec through waypoint ref: over HBONE to one of its pods' :15008 with
// the source pod's certificate, the original destination as authority, and the pod's
// identity expected of the server. A waypoint that is not declared or has no pod to
// take it refuses the connection: it is never sent around the waypoint.
func (z *Ztunnel) toWaypoint(snap *discovery.Snapshot, rec *record, ref string) decision {
	rec.Waypoint = ref
	wp := snap.Waypoint(ref)
	if wp == nil {
		return refusal(http.StatusServiceUnavailable, fmt.Errorf("waypoint %s %w", ref, errWaypointUndeclared))
	}
	pod, addr := z.pickWaypointPod(wp)
	if pod == nil {
		return refusal(http.StatusServiceUnavailable, fmt.Errorf("waypoint %s %w", ref, errWaypointNoPod))
	}
	if err := z.setDst(rec, pod); err != nil {
		return refusal(http.StatusBadRequest, err)
	}
	rec.MutualTLS = true
	// The pod may run on this node: it is not captured, so it is dialed all the same.
	rec.HBONEAddr = netip.AddrPortFrom(addr, PortHBONE)
	return decision{action: actHBONE, target: rec.OrigDst, peer: rec.HBONEAddr}
}

// waypointKey is a waypoint's key in the round-robin cursors.
type waypointKey struct{ namespace, name string }

// pickWaypointPod balances round robin over the waypoint's pods that can take a
// connection, and returns the one picked with its IPv4 address (nil if none can).
func (z *Ztunnel) pickWaypointPod(wp *discovery.Waypoint) (*discovery.Workload, netip.Addr) {
	if len(wp.Pods) == 0 {
		return nil, netip.Addr{}
	}
	n := next(&z.rr, waypointKey{wp.Namespace, wp.Name})
	for i := range uint64(len(wp.Pods)) {
		p := wp.Pods[(n+i)%uint64(len(wp.Pods))]
		// Readiness belongs here once the model carries it: a pod that is not ready is
		// passed over like one without an address.
		for _, a := range p.IPs {
			if a.Is4() {
				return p, a
			}
		}
	}
	return nil, netip.Addr{}
}

// checkWaypoint enforces, on every path to a local pod, that a destination behind
// waypoints is reached only from one of them (unless the check is off), and marks in
// rec.Waypoint the waypoint the connection came from.
func (z *Ztunnel) checkWaypoint(snap *discovery.Snapshot, rec *record, dstW *discovery.Workload) error {
	if len(dstW.BehindWaypoints) == 0 {
		return nil
	}
	if ref := z.waypointPeer(snap, rec, dstW); ref != "" {
		rec.Waypoint = ref
		return nil
	}
	if z.cfg.AllowWaypointBypass {
		return nil
	}
	return bypassError(dstW)
}

func bypassError(dstW *discovery.Workload) error {
	return fmt.Errorf("destination %s/%s is behind waypoint %s: %w",
		dstW.Namespace, dstW.Name, strings.Join(dstW.BehindWaypoints, ", "), errBehindWaypoint)
}

// waypointPeer returns the waypoint, of those dstW is behind, whose pod rec's tunnel
// comes from: authenticated as that pod's identity and sent from that pod's address;
// "" for any other peer. Plaintext and same-node connections never come from one
// (waypoint pods are not enrolled: they speak HBONE themselves).
func (z *Ztunnel) waypointPeer(snap *discovery.Snapshot, rec *record, dstW *discovery.Workload) string {
	if rec.Direction != dirInboundHBONE || !rec.tunnelSrc.IsValid() {
		return ""
	}
	pw := snap.WorkloadByIP(rec.tunnelSrc.Addr())
	if pw == nil || pw.Gateway == "" || !slices.Contains(dstW.BehindWaypoints, pw.Gateway) {
		return ""
	}
	id, err := identity.WorkloadID(z.td, pw.Namespace, pw.ServiceAccount)
	if err != nil || id != rec.SrcID {
		return ""
	}
	return pw.Gateway
}

// toLocal ends every path to a local pod (inbound HBONE, inbound plaintext, same
// node): the authorizer's say (policy), then delivery from bind.
func (z *Ztunnel) toLocal(snap *discovery.Snapshot, rec *record, bind netip.Addr) decision {
	if z.authorize != nil {
		if err := z.authorize(snap, rec); err != nil {
			return refusal(http.StatusUnauthorized, err)
		}
	}
	return decision{action: actDeliver, target: rec.Dst, bind: bind}
}

// setDst names w, a workload of the mesh, as rec's destination.
func (z *Ztunnel) setDst(rec *record, w *discovery.Workload) error {
	rec.DstWorkload = refOf(w)
	id, err := identity.WorkloadID(z.td, w.Namespace, w.ServiceAccount)
	if err != nil {
		return err
	}
	rec.DstID = id
	return nil
}

// localDst names the enrolled workload of this node that owns ip as rec's destination.
func (z *Ztunnel) localDst(snap *discovery.Snapshot, rec *record, ip netip.Addr) (*discovery.Workload, error) {
	w, err := z.localWorkload(snap, ip)
	if err != nil {
		return nil, err
	}
	return w, z.setDst(rec, w)
}

// resolved is where an outbound destination leads.
type resolved struct {
	target netip.AddrPort      // where the bytes finally go (pod IP:target port, or passthrough dst)
	dstW   *discovery.Workload // nil for passthrough to an unknown destination, and via a waypoint
	svc    *discovery.Service  // set when the original destination was a service VIP
	mesh   bool                // the destination speaks HBONE
	// waypoint is the waypoint ("namespace/name") the connection goes through, target
	// then being the original destination (the waypoint picks the endpoint).
	waypoint string
}

// resolve maps rec's original destination to the workload and address to reach; a
// service's endpoint is picked for srcW, the client, among those rec has not tried.
func (z *Ztunnel) resolve(snap *discovery.Snapshot, rec *record, srcW *discovery.Workload) (resolved, error) {
	dst := rec.OrigDst
	if z.isLocalAddr(dst.Addr()) {
		return resolved{}, errLoop
	}
	if svc, port := snap.ServiceByVIP(dst.Addr(), dst.Port()); svc != nil {
		if port == nil {
			return resolved{}, fmt.Errorf("%s port %d: %w", svc.Hostname, dst.Port(), errUnknownPort)
		}
		if svc.Waypoint != "" {
			return resolved{target: dst, svc: svc, mesh: true, waypoint: svc.Waypoint}, nil
		}
		ep, err := z.pickEndpoint(snap, svc, srcW, rec)
		if err != nil {
			return resolved{}, err
		}
		tp := port.TargetPort
		if tp == 0 {
			tp = port.Port
		}
		r := resolved{target: netip.AddrPortFrom(ep.Addr, tp), svc: svc}
		r.dstW = endpointWorkload(snap, ep)
		r.mesh = r.dstW != nil && r.dstW.Protocol == discovery.ProtocolHBONE
		return r, nil
	}
	r := resolved{target: dst}
	if w := snap.WorkloadByIP(dst.Addr()); w != nil {
		if w.Waypoint != "" {
			return resolved{target: dst, mesh: true, waypoint: w.Waypoint}, nil
		}
		r.dstW = w
		r.mesh = w.Protocol == discovery.ProtocolHBONE
	}
	return r, nil
}

func endpointWorkload(snap *discovery.Snapshot, ep discovery.Endpoint) *discovery.Workload {
	if w := snap.WorkloadByUID(ep.WorkloadUID); w != nil {
		return w
	}
	return snap.WorkloadByIP(ep.Addr)
}

// serviceKey is a service's key in the round-robin cursors: a struct, not a joined
// string, so a lookup allocates nothing.
type serviceKey struct{ namespace, name string }

// pickEndpoint balances round robin over the service's endpoints that rec has not
// tried yet, preferring, in this order: healthy ones in the client's zone (when the
// service prefers close endpoints), healthy ones, any. An endpoint is healthy unless
// its connects failed lately (endpointHealth); when none is, one is tried all the
// same. The endpoint picked is added to rec's tries.
func (z *Ztunnel) pickEndpoint(snap *discovery.Snapshot, svc *discovery.Service, srcW *discovery.Workload, rec *record) (discovery.Endpoint, error) {
	eps := svc.Endpoints
	if len(eps) == 0 {
		return discovery.Endpoint{}, fmt.Errorf("%s: %w", svc.Hostname, errNoEndpoint)
	}
	zone := preferredZone(svc, srcW)
	n := next(&z.rr, serviceKey{svc.Namespace, svc.Name})
	var ep discovery.Endpoint
	found := false
	if zone == (discovery.Locality{}) && rec.attempts == 0 && z.health.empty() {
		ep, found = eps[n%uint64(len(eps))], true // the common case: plain round robin
	} else {
		z.health.view(time.Now(), func(healthy func(netip.Addr) bool) {
			tiers := [...]func(discovery.Endpoint) bool{
				func(e discovery.Endpoint) bool { return healthy(e.Addr) && inZone(snap, e, zone) },
				func(e discovery.Endpoint) bool { return healthy(e.Addr) },
				func(discovery.Endpoint) bool { return true },
			}
			start := 0
			if zone == (discovery.Locality{}) {
				start = 1
			}
			for _, ok := range tiers[start:] {
				if ep, found = nth(eps, n, func(e discovery.Endpoint) bool { return !rec.triedAddr(e.Addr) && ok(e) }); found {
					return
				}
			}
		})
	}
	if !found {
		return discovery.Endpoint{}, fmt.Errorf("%s: %w", svc.Hostname, errEndpointsTried)
	}
	rec.tryEndpoint(ep.Addr, len(eps))
	return ep, nil
}

// nth returns the (n mod k)-th of the k endpoints that ok accepts, if any: round
// robin over them, without allocating.
func nth(eps []discovery.Endpoint, n uint64, ok func(discovery.Endpoint) bool) (discovery.Endpoint, bool) {
	k := uint64(0)
	for _, e := range eps {
		if ok(e) {
			k++
		}
	}
	if k == 0 {
		return discovery.Endpoint{}, false
	}
	i := n % k
	for _, e := range eps {
		if ok(e) {
			if i == 0 {
				return e, true
			}
			i--
		}
	}
	return discovery.Endpoint{}, false
}

// preferredZone is the client's region and zone when svc keeps traffic in the
// client's zone (trafficDistribution PreferClose or PreferSameZone) and the client's
// zone is known; zero otherwise.
func preferredZone(svc *discovery.Service, srcW *discovery.Workload) discovery.Locality {
	switch svc.TrafficDistribution {
	case discovery.TrafficDistributionPreferClose, discovery.TrafficDistributionPreferSameZone:
	default:
		return discovery.Locality{}
	}
	if srcW == nil || srcW.Locality.Zone == "" {
		return discovery.Locality{}
	}
	return discovery.Locality{Region: srcW.Locality.Region, Zone: srcW.Locality.Zone}
}

// inZone reports whether ep's workload runs in zone (same region and zone).
func inZone(snap *discovery.Snapshot, ep discovery.Endpoint, zone discovery.Locality) bool {
	w := endpointWorkload(snap, ep)
	return w != nil && w.Locality.Region == zone.Region && w.Locality.Zone == zone.Zone
}

// next advances the round-robin cursor of key (a serviceKey or waypointKey). Typed,
// not any: a key boxed once for both lookups would escape on every call.
func next[K serviceKey | waypointKey](rr *sync.Map, key K) uint64 {
	v, ok := rr.Load(key)
	if !ok {
		v, _ = rr.LoadOrStore(key, new(atomic.Uint64))
	}
	return v.(*atomic.Uint64).Add(1) - 1
}

// isLocalAddr reports whether ip can only mean this host's loopback or no host at all.
// Dialing it from ztunnel would reach ztunnel's own sockets instead of what the pod meant.
// The node's own addresses are fine: ztunnel's capture listeners are bound to loopback, so
// a passthrough dial to the node reaches the node's services, as it would without the mesh.
func (z *Ztunnel) isLocalAddr(ip netip.Addr) bool {
	return ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast()
}

// localWorkload returns the enrolled workload of this node that owns ip.
func (z *Ztunnel) localWorkload(snap *discovery.Snapshot, ip netip.Addr) (*discovery.Workload, error) {
	w := snap.WorkloadByIP(ip)
	if w == nil || w.Node != z.cfg.NodeName || !w.Enrolled {
		return nil, fmt.Errorf("%s: %w", ip, errNotLocalDest)
	}
	return w, nil
}

func hasIP(w *discovery.Workload, ip netip.Addr) bool {
	for _, a := range w.IPs {
		if a == ip {
			return true
		}
	}
	return false
}
