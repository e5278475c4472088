package discovery

import (
	"fmt"
	"maps"
	"slices"
)

// Istio's waypoint labels and the Gateway API's pod label.
const (
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	LabelWaypointFor          = "istio.io/waypoint-for"
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	// UseWaypointNone on an object opts it out of its namespace's waypoint.
	UseWaypointNone = "none"
)

// DefaultWaypointClass is the GatewayClass of waypoints, as in Istio.
const DefaultWaypointClass = "istio-waypoint"

// WaypointFor says which traffic a waypoint takes (istio.io/waypoint-for).
type WaypointFor string

const (
	WaypointForService  WaypointFor = "service" // the default
	WaypointForWorkload WaypointFor = "workload"
	WaypointForAll      WaypointFor = "all"
	WaypointForNone     WaypointFor = "none"
)

func (f WaypointFor) valid() bool {
	switch f {
	case WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForNone:
		return true
	}
	return false
}

func (f WaypointFor) services() bool { return f == WaypointForService || f == WaypointForAll }
func (f WaypointFor) workloads() bool {
	return f == WaypointForWorkload || f == WaypointForAll
}

// Which namespaces may bind to a waypoint (allowedRoutes.namespaces.from of its HBONE
// listener).
const (
	FromSame     = "Same" // the default
	FromAll      = "All"
	FromSelector = "Selector"
)

// Waypoint is a declared waypoint: a Gateway of the waypoint class with an HBONE
// listener on 15008. Build computes Pods from the workloads labelled with its name.
type Waypoint struct {
	Name      string      `json:"name"`
	Namespace string      `json:"namespace"`
	For       WaypointFor `json:"for"`
	From      string      `json:"from"`
	// Selector (matchLabels) picks the namespaces that may bind when From is Selector.
	Selector map[string]string `json:"selector,omitempty"`
	// Origin says where it was declared (file:line), for problems.
	Origin string `json:"origin,omitempty"`
	// Pods are the workloads that run it (label LabelGatewayName = Name in Namespace).
	Pods []*Workload `json:"-"`
}

// Ref is "namespace/name".
func (w *Waypoint) Ref() string { return w.Namespace + "/" + w.Name }

// allows reports whether an object of namespace ns (with nsLabels) may bind to w.
func (w *Waypoint) allows(ns string, nsLabels map[string]string) bool {
	switch w.From {
	case FromAll:
		return true
	case FromSelector:
		for k, v := range w.Selector {
			if lv, ok := nsLabels[k]; !ok || lv != v {
				return false
			}
		}
		return true
	}
	return ns == w.Namespace
}

// waypoints indexes the declarations; invalid ones are problems, not errors: they
// change nothing else.
func (b *builder) waypoints(s *Snapshot, in []*Waypoint) {
	s.waypointByRef = make(map[string]*Waypoint, len(in))
	for _, w := range in {
		if w == nil {
			continue
		}
		wp := &Waypoint{Name: w.Name, Namespace: w.Namespace, For: w.For, From: w.From,
			Selector: maps.Clone(w.Selector), Origin: w.Origin}
		if wp.For == "" {
			wp.For = WaypointForService
		}
		if wp.From == "" {
			wp.From = FromSame
		}
		switch {
		case !isDNS1123Subdomain(wp.Name) || !isDNS1123Label(wp.Namespace):
			s.problem(wp.Origin, "waypoint %q in namespace %q: invalid name", wp.Name, wp.Namespace)
			continue
		case !wp.For.valid():
			s.problem(wp.Origin, "waypoint %s: %s=%q is not service, workload, all or none", wp.Ref(), LabelWaypointFor, wp.For)
			continue
		case wp.From != FromSame && wp.From != FromAll && wp.From != FromSelector:
			s.problem(wp.Origin, "waypoint %s: allowedRoutes.namespaces.from %q is not Same, All or Selector", wp.Ref(), wp.From)
			continue
		case s.waypointByRef[wp.Ref()] != nil:
			s.problem(wp.Origin, "waypoint %s is already declared at %s", wp.Ref(), s.waypointByRef[wp.Ref()].Origin)
			continue
		}
		s.Waypoints = append(s.Waypoints, wp)
		s.waypointByRef[wp.Ref()] = wp
	}
}

// waypointPod makes wl one of its waypoint's pods when it carries the label: such a
// pod terminates HBONE itself, so it is never captured.
func (s *Snapshot) waypointPod(wl *Workload) bool {
	name, ok := wl.Labels[LabelGatewayName]
	if !ok {
		return false
	}
	wp := s.waypointByRef[wl.Namespace+"/"+name]
	if wp == nil {
		return false
	}
	wl.Gateway = wp.Ref()
	wp.Pods = append(wp.Pods, wl)
	return true
}

// bindWaypoints computes, with Istio's rules, which waypoint each Service and workload
// sends its traffic through, and which waypoints may reach each workload.
func (b *builder) bindWaypoints(s *Snapshot) {
	if len(s.Waypoints) == 0 && !s.anyWaypointLabel() {
		return
	}
	for _, svc := range s.Services {
		ref, explicit := s.binding(svc.Namespace, svc.Labels)
		if ref == "" {
			continue
		}
		what := "service " + svc.Namespace + "/" + svc.Name
		if wp := s.checkBinding(what, svc.Namespace, ref, explicit, WaypointFor.services); wp != "" {
			svc.Waypoint = wp
			for _, ep := range svc.Endpoints {
				if w := s.workloadByUID[ep.WorkloadUID]; w != nil && w.Gateway == "" {
					w.addProtector(wp)
				}
			}
		}
	}
	for _, w := range s.Workloads {
		if w.Gateway != "" {
			continue // a waypoint's own pod never goes through a waypoint
		}
		ref, explicit := s.binding(w.Namespace, w.Labels)
		if ref == "" {
			continue
		}
		if wp := s.checkBinding("workload "+w.Namespace+"/"+w.Name, w.Namespace, ref, explicit, WaypointFor.workloads); wp != "" {
			w.Waypoint = wp
			w.addProtector(wp)
		}
	}
}

func (s *Snapshot) anyWaypointLabel() bool {
	for _, ns := range s.Namespaces {
		if _, ok := ns.Labels[LabelUseWaypoint]; ok {
			return true
		}
	}
	for _, svc := range s.Services {
		if _, ok := svc.Labels[LabelUseWaypoint]; ok {
			return true
		}
	}
	for _, w := range s.Workloads {
		if _, ok := w.Labels[LabelUseWaypoint]; ok {
			return true
		}
	}
	return false
}

// binding returns the waypoint ("ns/name") an object of namespace ns with labels asks
// for, and whether the object itself (not its namespace) names it; "" for none.
func (s *Snapshot) binding(ns string, labels map[string]string) (ref string, explicit bool) {
	from := labels
	name, ok := labels[LabelUseWaypoint]
	if !ok {
		n := s.nsByName[ns]
		if n == nil {
			return "", false
		}
		from = n.Labels
		if name, ok = from[LabelUseWaypoint]; !ok {
			return "", false
		}
	} else {
		explicit = true
	}
	if name == UseWaypointNone || name == "" {
		return "", false
	}
	wpNS := ns
	if v, ok := from[LabelUseWaypointNamespace]; ok && v != "" {
		wpNS = v
	}
	return wpNS + "/" + name, explicit
}

// checkBinding validates what's binding to ref. A waypoint that is not declared still
// binds (its traffic is refused until it exists: never sent around it); one that does
// not take this kind of traffic or does not allow the namespace does not, with a problem
// unless the binding was inherited from the namespace for a kind it never takes.
func (s *Snapshot) checkBinding(what, ns, ref string, explicit bool, takes func(WaypointFor) bool) string {
	wp := s.waypointByRef[ref]
	if wp == nil {
		s.problem("", "%s uses waypoint %s, which is not declared: its traffic is refused", what, ref)
		return ref
	}
	if !takes(wp.For) {
		if explicit {
			s.problem(wp.Origin, "%s uses waypoint %s, whose %s is %q: not bound", what, ref, LabelWaypointFor, wp.For)
		}
		return ""
	}
	var nsLabels map[string]string
	if n := s.nsByName[ns]; n != nil {
		nsLabels = n.Labels
	}
	if !wp.allows(ns, nsLabels) {
		s.problem(wp.Origin, "%s uses waypoint %s, whose allowedRoutes do not admit namespace %q: not bound", what, ref, ns)
		return ""
	}
	return ref
}

func (w *Workload) addProtector(ref string) {
	if !slices.Contains(w.BehindWaypoints, ref) {
		w.BehindWaypoints = append(w.BehindWaypoints, ref)
	}
}

func (s *Snapshot) problem(origin, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if origin != "" {
		msg = origin + ": " + msg
	}
	s.WaypointProblems = append(s.WaypointProblems, msg)
}

// Waypoint returns the declared waypoint "namespace/name", or nil.
func (s *Snapshot) Waypoint(ref string) *Waypoint { return s.or().waypointByRef[ref] }
