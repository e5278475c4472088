package waypoint

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/waypoint/route"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// clusters are the waypoint's upstream clusters, one per Service port it forwards to
// (Envoy's unit of load balancing, circuit breaking and outlier detection). A cluster
// outlives model versions: each new version updates its policy and endpoints and keeps
// the endpoints' load and health.
type clusters struct {
	byKey   sync.Map // clusterKey -> *clusterState
	mu      sync.Mutex
	traffic atomic.Pointer[traffic]
}

type clusterKey struct {
	namespace, name string
	port            uint16
}

type clusterState struct {
	c       atomic.Pointer[upstream.Cluster]
	mu      sync.Mutex
	version atomic.Uint64 // the model version its endpoints come from
	self    discovery.Locality
}

// traffic is what one model version's DestinationRules compile to.
type traffic struct {
	version  uint64
	policies *upstream.Policies
	problems upstream.Problems
	self     *discovery.Workload // the waypoint's own pod, for locality; may be nil
}

// clusterName is Istio's name of the cluster a waypoint forwards a Service port to.
func clusterName(svc *discovery.Service, port uint16) string {
	return "inbound-vip|" + strconv.Itoa(int(port)) + "|http|" + svc.Hostname
}

// trafficFor compiles snap's DestinationRules once per model version and closes the
// clusters of Services the model no longer has.
func (w *Waypoint) trafficFor(snap *discovery.Snapshot) *traffic {
	if t := w.clusters.traffic.Load(); t != nil && t.version == snap.Version {
		return t
	}
	w.clusters.mu.Lock()
	defer w.clusters.mu.Unlock()
	if t := w.clusters.traffic.Load(); t != nil && t.version == snap.Version {
		return t
	}
	pols, probs := upstream.Compile(snap.DestinationRules, upstream.Options{
		RootNamespace: w.cfg.RootNamespace, Namespace: w.cfg.Namespace,
	})
	t := &traffic{version: snap.Version, policies: pols, problems: probs, self: w.selfWorkload(snap)}
	old := w.clusters.traffic.Swap(t)
	if old == nil || fmt.Sprint(old.problems) != fmt.Sprint(probs) {
		for _, err := range probs.Errors {
			w.log.Warn(msgTrafficProblem, keyError, err.Error())
		}
		for _, s := range probs.Warnings {
			w.log.Info(msgTrafficWarning, keyError, s)
		}
	}
	w.clusters.byKey.Range(func(k, v any) bool {
		key := k.(clusterKey)
		if svc := snap.ServiceByName(key.namespace, key.name); svc == nil || svc.Port(key.port) == nil {
			w.clusters.byKey.Delete(k)
			v.(*clusterState).c.Load().Close()
		}
		return true
	})
	return t
}

// selfWorkload is the waypoint's own pod in the model: on its node (Config.NodeName)
// when it has one there, else any pod of the waypoint.
func (w *Waypoint) selfWorkload(snap *discovery.Snapshot) *discovery.Workload {
	var any *discovery.Workload
	for _, wl := range snap.Workloads {
		if wl.Gateway != w.ref {
			continue
		}
		if w.cfg.NodeName == "" || wl.Node == w.cfg.NodeName {
			return wl
		}
		if any == nil {
			any = wl
		}
	}
	return any
}

// clusterFor returns the cluster of svc's port, its endpoints those of snap.
func (w *Waypoint) clusterFor(snap *discovery.Snapshot, svc *discovery.Service, port *discovery.ServicePort) *upstream.Cluster {
	key := clusterKey{svc.Namespace, svc.Name, port.Port}
	v, ok := w.clusters.byKey.Load(key)
	if !ok {
		fresh := w.newCluster(w.trafficFor(snap), svc, port)
		if v, ok = w.clusters.byKey.LoadOrStore(key, fresh); ok {
			fresh.c.Load().Close() // another request made it first
		}
	}
	cs := v.(*clusterState)
	if cs.version.Load() != snap.Version {
		cs.mu.Lock()
		if cs.version.Load() != snap.Version {
			t := w.trafficFor(snap)
			if t.self != nil && t.self.Locality != cs.self {
				// The waypoint's own place moved (its node relabelled): the priorities
				// start anew from there.
				old := cs.c.Swap(w.newCluster(t, svc, port).c.Load())
				old.Close()
				cs.self = t.self.Locality
			}
			pol := t.policies.ForService(svc, port.Port)
			if svc.TrafficDistribution != "" {
				pol = pol.WithTrafficDistribution(svc.TrafficDistribution)
			}
			cs.c.Load().Update(pol, endpointsOf(snap, svc, port))
			cs.version.Store(snap.Version)
		}
		cs.mu.Unlock()
	}
	return cs.c.Load()
}

// newCluster is a cluster for svc's port whose priorities start from the waypoint's own
// pod (t.self).
func (w *Waypoint) newCluster(t *traffic, svc *discovery.Service, port *discovery.ServicePort) *clusterState {
	cfg := upstream.ClusterConfig{Name: clusterName(svc, port.Port)}
	cs := &clusterState{}
	if t.self != nil {
		cfg.Locality, cfg.Labels, cfg.Node = t.self.Locality, t.self.Labels, t.self.Node
		cs.self = t.self.Locality
	}
	cs.c.Store(upstream.NewCluster(cfg, (*clusterEvents)(w)))
	return cs
}

// endpointsOf are svc's endpoints on port's target port, with their workloads' places.
func endpointsOf(snap *discovery.Snapshot, svc *discovery.Service, port *discovery.ServicePort) []upstream.Endpoint {
	if port.TargetPort == 0 {
		return nil
	}
	eps := make([]upstream.Endpoint, 0, len(svc.Endpoints))
	for _, ep := range svc.Endpoints {
		e := upstream.Endpoint{Addr: netip.AddrPortFrom(ep.Addr, port.TargetPort), ID: ep.WorkloadUID}
		if wl := snap.WorkloadByUID(ep.WorkloadUID); wl != nil {
			e.Locality, e.Labels, e.Node = wl.Locality, wl.Labels, wl.Node
		}
		eps = append(eps, e)
	}
	return eps
}

// pickEndpoint chooses an endpoint of svc's port by its cluster's load balancer, never
// one of tried while another is healthy. req (nil for TCP) is hashed only when the
// cluster balances by a consistent hash.
func (w *Waypoint) pickEndpoint(in *inbound, svc *discovery.Service, port *discovery.ServicePort,
	req *route.Request, tried []*upstream.Host) (upstreamPick, error) {
	snap := in.snap
	c := w.clusterFor(snap, svc, port)
	pr := upstream.PickRequest{Exclude: tried}
	var set *upstream.SetCookie
	if hp := c.Policy().LB.Hash; hp != nil {
		pr.Hash, pr.HasHash, set = hp.Key(hashInput(in, req))
		pr.Exclude = nil // Istio drops the previous-hosts predicate with consistent hashing
	}
	h, err := c.Pick(pr)
	if err != nil {
		return upstreamPick{upEndpoint: upEndpoint{cluster: c}}, fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return upstreamPick{
		upEndpoint: upEndpoint{addr: h.Addr(), workload: snap.WorkloadByUID(h.Endpoint().ID), host: h, cluster: c},
		cookie:     set,
	}, nil
}

// upstreamPick is a chosen endpoint and the cookie to set for consistent hashing.
type upstreamPick struct {
	upEndpoint
	cookie *upstream.SetCookie
}

// clusterEvents logs the clusters' ejections, returns and overflows.
type clusterEvents Waypoint

func (e *clusterEvents) ClusterEvent(ev upstream.Event) {
	w := (*Waypoint)(e)
	switch ev.Kind {
	case upstream.EventEjected:
		w.log.Warn(msgEjected, keyCluster, ev.Cluster, keyUpstream, ev.Addr.String(), keyReason, ev.Reason.String(), keyUntil, ev.Until)
	case upstream.EventReturned:
		w.log.Info(msgReturned, keyCluster, ev.Cluster, keyUpstream, ev.Addr.String())
	case upstream.EventOverflow:
		if w.log.Enabled(context.Background(), slog.LevelDebug) {
			w.log.Debug(msgOverflow, keyCluster, ev.Cluster, keyLimit, ev.Limit.String())
		}
	}
}

// limitedConn releases its cluster's connection slot once closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// CloseWrite half-closes, as the relay needs of both sides.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// statuses are the clusters' states, for /config_dump.
func (c *clusters) statuses() []upstream.ClusterStatus {
	var out []upstream.ClusterStatus
	c.byKey.Range(func(_, v any) bool {
		out = append(out, v.(*clusterState).c.Load().Snapshot())
		return true
	})
	return out
}

func (c *clusters) close() {
	c.byKey.Range(func(k, v any) bool {
		c.byKey.Delete(k)
		v.(*clusterState).c.Load().Close()
		return true
	})
}
