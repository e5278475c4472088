package ztunnel

import (
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
)

// direction is which way a connection passes this node.
type direction uint8

const (
	dirOutbound     direction = iota + 1 // captured from a local pod, to another node or out of the mesh
	dirInboundHBONE                      // HBONE from another node, to a local pod
	dirInboundPlain                      // plaintext from outside the mesh, to a local pod
	dirLocal                             // captured from a local pod, to a local pod (same node)
)

// String is the direction's name in the access log, metrics and /config_dump.
func (d direction) String() string {
	switch d {
	case dirOutbound:
		return "outbound"
	case dirInboundHBONE:
		return "inbound"
	case dirInboundPlain:
		return "inbound_plaintext"
	case dirLocal:
		return "local"
	}
	return "unknown"
}

// reporter is Istio's reporter label: the source side reports what it sends, the
// destination side what it receives.
func (d direction) reporter() string {
	if d == dirOutbound || d == dirLocal {
		return "source"
	}
	return "destination"
}

// workloadRef names a workload of the model; zero when that end is no known workload.
type workloadRef struct{ Namespace, Name, UID string }

func refOf(w *discovery.Workload) workloadRef {
	if w == nil {
		return workloadRef{}
	}
	return workloadRef{Namespace: w.Namespace, Name: w.Name, UID: w.UID}
}

// String is "namespace/name", empty for no workload.
func (w workloadRef) String() string {
	if w.Name == "" {
		return ""
	}
	return w.Namespace + "/" + w.Name
}

// serviceRef names the service a connection was addressed to (by its VIP).
type serviceRef struct{ Namespace, Name, Hostname string }

func serviceOf(s *discovery.Service) serviceRef {
	if s == nil {
		return serviceRef{}
	}
	return serviceRef{Namespace: s.Namespace, Name: s.Name, Hostname: s.Hostname}
}

// record is one connection through this node, described once as it arrives and
// completed by route: what routing, authorization, the access log, metrics and
// /config_dump all read. Its fields are set before the connection is relayed and not
// changed afterwards, except the byte counters.
type record struct {
	ID        uint64 // set when relayed
	Direction direction
	// Src is the client: the captured pod, the plaintext client, or for inbound
	// HBONE the address the tunnel peer forwarded when it owns it (else the peer's).
	Src netip.AddrPort
	// Dst is where the bytes go: a pod's IP and target port, or a passthrough
	// destination. OrigDst is what the client addressed (a service VIP and port, or
	// the CONNECT authority).
	Dst, OrigDst netip.AddrPort
	// HBONEAddr is the tunnel's address: the peer ztunnel's (outbound) or the one
	// the peer connected to (inbound).
	HBONEAddr                netip.AddrPort
	SrcWorkload, DstWorkload workloadRef
	SrcID, DstID             spiffeid.ID
	Service                  serviceRef
	// Waypoint is the waypoint ("namespace/name") an outbound connection goes through,
	// or an inbound one came from.
	Waypoint       string
	MutualTLS      bool // both ends authenticated (HBONE, or same node)
	Start          time.Time
	Sent, Received atomic.Int64 // client -> server, server -> client

	// claimedSrc is, for inbound HBONE, the client address the peer forwarded, trusted
	// only if the peer's identity owns it.
	claimedSrc netip.AddrPort
	// tunnelSrc is, for inbound HBONE, the tunnel's TCP peer (Src may become the
	// forwarded address).
	tunnelSrc netip.AddrPort
	closers   []net.Conn // closed when draining
	held      peerHold   // per-peer slots given back when it ends
	// decision is the policy's, for connections to a local pod; revoked is set
	// when a policy change closed the connection.
	decision policy.Decision
	revoked  atomic.Bool
	// explain marks a what-if record of /policy/explain: routed and decided as
	// a real connection, never logged or connected.
	explain bool

	// For an outbound connection to a service's endpoints: tried are the endpoint
	// addresses picked so far, the last one Dst's, and candidates the service's
	// endpoint count then; failures say why the earlier ones did not connect
	// ("ip:port reason").
	tried      [maxConnectAttempts]netip.Addr
	attempts   int
	candidates int
	failures   []string
}

// tryEndpoint notes that a's endpoint, of a service with candidates, is tried.
func (r *record) tryEndpoint(a netip.Addr, candidates int) {
	if r.attempts < len(r.tried) {
		r.tried[r.attempts] = a
	}
	r.attempts++
	r.candidates = candidates
}

// triedAddr reports whether a's endpoint was tried already.
func (r *record) triedAddr(a netip.Addr) bool {
	return slices.Contains(r.tried[:min(r.attempts, len(r.tried))], a)
}

// balanced reports whether rec's destination was picked among several service
// endpoints, so that another may be tried should it not connect.
func (r *record) balanced() bool { return r.candidates > 1 }

// retarget clears what route set of rec's destination, before it routes the
// connection again to another endpoint: every check route made of the destination
// (its identity, waypoint binding, policy) is made anew.
func (r *record) retarget() {
	r.Direction = dirOutbound
	r.Dst = r.OrigDst
	r.DstWorkload = workloadRef{}
	r.DstID = spiffeid.ID{}
	r.Service = serviceRef{}
	r.HBONEAddr = netip.AddrPort{}
	r.Waypoint = ""
	r.MutualTLS = false
	r.decision = policy.Decision{}
	r.Sent.Store(0)
}

func newRecord(dir direction, src, dst netip.AddrPort) *record {
	return &record{Direction: dir, Src: src, Dst: dst, OrigDst: dst, Start: time.Now()}
}

// security is Istio's connection_security_policy.
func (r *record) security() string {
	if r.MutualTLS {
		return "mutual_tls"
	}
	return "none"
}

// ConnInfo describes one proxied connection, for /config_dump.
type ConnInfo struct {
	ID          uint64    `json:"id"`
	Direction   string    `json:"direction"` // outbound, inbound, inbound_plaintext, local
	Src         string    `json:"src"`
	Dst         string    `json:"dst"`
	OrigDst     string    `json:"origDst,omitempty"` // when the client addressed something else (a service VIP)
	SrcIdentity string    `json:"srcIdentity,omitempty"`
	DstIdentity string    `json:"dstIdentity,omitempty"`
	SrcWorkload string    `json:"srcWorkload,omitempty"` // namespace/name
	DstWorkload string    `json:"dstWorkload,omitempty"`
	DstService  string    `json:"dstService,omitempty"` // hostname
	Waypoint    string    `json:"waypoint,omitempty"`   // gone through (outbound) or come from (inbound)
	HBONEAddr   string    `json:"hboneAddr,omitempty"`
	Security    string    `json:"security"` // mutual_tls or none
	Start       time.Time `json:"start"`
	Sent        int64     `json:"bytesSent"` // client -> server
	Received    int64     `json:"bytesReceived"`
	Policy      string    `json:"policy,omitempty"` // the authorization decision, for connections to a local pod
}

// info is the admin view of r, with its byte counts as of now.
func (r *record) info() ConnInfo {
	ci := ConnInfo{
		ID:          r.ID,
		Direction:   r.Direction.String(),
		Src:         r.Src.String(),
		Dst:         r.Dst.String(),
		SrcIdentity: r.SrcID.String(),
		DstIdentity: r.DstID.String(),
		SrcWorkload: r.SrcWorkload.String(),
		DstWorkload: r.DstWorkload.String(),
		DstService:  r.Service.Hostname,
		Waypoint:    r.Waypoint,
		Security:    r.security(),
		Start:       r.Start,
		Sent:        r.Sent.Load(),
		Received:    r.Received.Load(),
	}
	if r.OrigDst != r.Dst {
		ci.OrigDst = r.OrigDst.String()
	}
	if r.HBONEAddr.IsValid() {
		ci.HBONEAddr = r.HBONEAddr.String()
	}
	if r.decision.Policy != "" || r.decision.Reason != "" {
		ci.Policy = r.decision.String()
	}
	return ci
}
