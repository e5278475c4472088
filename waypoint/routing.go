package waypoint

import (
	"sync"
	"sync/atomic"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/waypoint/route"
)

// routing is what the waypoint derives from one model version: the compiled routes
// and, filled as streams need them, the policies it enforces per destination.
type routing struct {
	version  uint64
	table    *route.Table
	statuses []route.Status
	policies sync.Map // "namespace/name" of the Service ("/" for a workload) -> *policy.Applied
}

// routesCache holds the routing of the latest model version seen.
type routesCache struct{ cur atomic.Pointer[routing] }

// routesFor compiles snap's HTTPRoutes and GRPCRoutes once per model version,
// logging the routes that are not accepted (they change nothing else).
func (w *Waypoint) routesFor(snap *discovery.Snapshot) *routing {
	if r := w.routes.cur.Load(); r != nil && r.version == snap.Version {
		return r
	}
	svcs := func(ns, name string) (route.ServiceInfo, bool) {
		s := snap.ServiceByName(ns, name)
		if s == nil {
			return route.ServiceInfo{}, false
		}
		info := route.ServiceInfo{Namespace: ns, Name: name}
		for _, p := range s.Ports {
			info.Ports = append(info.Ports, route.ServicePort{Name: p.Name, Port: p.Port})
		}
		return info, true
	}
	table, statuses := route.Compile(snap.Routes.HTTPRoutes, snap.Routes.GRPCRoutes, svcs, snap.Routes.ReferenceGrants)
	r := &routing{version: snap.Version, table: table, statuses: statuses}
	if old := w.routes.cur.Swap(r); old == nil || old.version != r.version {
		for _, st := range statuses {
			for _, ps := range st.Parents {
				for _, c := range ps.Conditions {
					if c.Status != "True" {
						w.log.Warn(msgRouteProblem, keyRoute, st.Namespace+"/"+st.Name, keyParent, string(ps.ParentRef.Name),
							keyCondition, c.Type, keyReason, c.Reason, keyError, c.Message)
					}
				}
			}
		}
	}
	return r
}
