package ztunnel

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/internal/serve"
)

// startHTTP starts readiness (:15021), metrics (:15020) and admin (localhost:15000,
// with /config_dump and /policy/explain).
func (z *Ztunnel) startHTTP() (*serve.Servers, error) {
	return serve.Start(z.cfg.HTTP, serve.Handlers{
		Ready:   z.Ready,
		Metrics: z.reg,
		Admin: map[string]http.Handler{
			"/config_dump":    http.HandlerFunc(z.serveConfigDump),
			"/policy/explain": http.HandlerFunc(z.serveExplain),
		},
		Logger: z.log,
	})
}

// ConfigDump is the admin view of a node.
type ConfigDump struct {
	Node         string                 `json:"node"`
	TrustDomain  string                 `json:"trustDomain"`
	DataPath     string                 `json:"dataPath"`
	Ready        string                 `json:"ready"`
	ModelVersion uint64                 `json:"modelVersion"`
	Workloads    []dumpWorkload         `json:"workloads"`
	Services     []dumpService          `json:"services"`
	Certificates []identity.CertInfo    `json:"certificates"`
	Captured     map[string]int         `json:"capturedPods"`
	Connections  []ConnInfo             `json:"connections"`
	Pool         map[string]interface{} `json:"hbonePool"`
	Problems     any                    `json:"modelProblems,omitempty"`
	// Policies are every PeerAuthentication and AuthorizationPolicy of the model;
	// PolicyProblems the local files' problems (Kubernetes reports them in
	// modelProblems).
	Policies       []DumpPolicy `json:"policies"`
	PolicyProblems []string     `json:"policyProblems,omitempty"`
	// Waypoints are the declared waypoints with their pods; WaypointProblems the
	// waypoints' and bindings' problems.
	Waypoints        []dumpWaypoint `json:"waypoints"`
	WaypointProblems []string       `json:"waypointProblems,omitempty"`
	// EndpointHealth are the service endpoints whose connects failed lately, passed
	// over until their backoff ends (none: every endpoint is healthy).
	EndpointHealth []EndpointHealth `json:"endpointHealth"`
}

type dumpWaypoint struct {
	Name   string `json:"name"` // namespace/name
	For    string `json:"for"`
	From   string `json:"from"` // allowedRoutes.namespaces.from
	Origin string `json:"origin,omitempty"`
	// Pods are "namespace/name ip identity" (the identity ztunnel expects of it).
	Pods []string `json:"pods"`
}

type dumpWorkload struct {
	UID            string   `json:"uid"`
	Name           string   `json:"name"`
	Namespace      string   `json:"namespace"`
	ServiceAccount string   `json:"serviceAccount"`
	Node           string   `json:"node"`
	IPs            []string `json:"ips"`
	Protocol       string   `json:"protocol"`
	Identity       string   `json:"identity,omitempty"`
	Local          bool     `json:"local"`
	// For local workloads: the policies that apply ("kind namespace/name").
	Policies []string `json:"policies,omitempty"`
	// Waypoint is the waypoint traffic to its address goes through; BehindWaypoints
	// those that alone may reach it; Gateway the waypoint it runs.
	Waypoint        string   `json:"waypoint,omitempty"`
	BehindWaypoints []string `json:"behindWaypoints,omitempty"`
	Gateway         string   `json:"gateway,omitempty"`
}

type dumpService struct {
	Hostname  string   `json:"hostname"`
	VIPs      []string `json:"vips"`
	Ports     []string `json:"ports"`
	Endpoints []string `json:"endpoints"`
	Waypoint  string   `json:"waypoint,omitempty"` // traffic to its VIPs goes through it
}

// Dump returns the current admin view.
func (z *Ztunnel) Dump() ConfigDump {
	snap := z.store.Load()
	d := ConfigDump{
		Node:         z.cfg.NodeName,
		TrustDomain:  z.cfg.TrustDomain,
		DataPath:     z.cfg.DataPath.String(),
		Ready:        "ok",
		ModelVersion: snap.Version,
		Certificates: z.ident.Certificates(),
		Captured:     map[string]int{},
		Connections:  z.conns.snapshot(),
	}
	d.EndpointHealth = z.health.dump(time.Now())
	if err := z.Ready(); err != nil {
		d.Ready = err.Error()
	}
	for _, w := range snap.Workloads {
		dw := dumpWorkload{UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Node: w.Node, Protocol: string(w.Protocol), Local: w.Node == z.cfg.NodeName,
			Waypoint: w.Waypoint, BehindWaypoints: w.BehindWaypoints, Gateway: w.Gateway}
		for _, ip := range w.IPs {
			dw.IPs = append(dw.IPs, ip.String())
		}
		if id, err := identity.WorkloadID(z.td, w.Namespace, w.ServiceAccount); err == nil {
			dw.Identity = id.String()
		}
		if dw.Local {
			dw.Policies = appliedRefs(snap.PoliciesFor(w))
		}
		d.Workloads = append(d.Workloads, dw)
	}
	for _, s := range snap.Services {
		ds := dumpService{Hostname: s.Hostname, Waypoint: s.Waypoint}
		for _, v := range s.VIPs {
			ds.VIPs = append(ds.VIPs, v.String())
		}
		for _, p := range s.Ports {
			ds.Ports = append(ds.Ports, fmt.Sprintf("%d->%d", p.Port, p.TargetPort))
		}
		for _, e := range s.Endpoints {
			ds.Endpoints = append(ds.Endpoints, e.Addr.String())
		}
		d.Services = append(d.Services, ds)
	}
	z.captureMu.Lock()
	if z.capture != nil {
		for ip, idx := range z.capture.Pods() {
			d.Captured[ip.String()] = idx
		}
	}
	z.captureMu.Unlock()
	if z.problems != nil {
		d.Problems = z.problems()
	}
	d.Policies = dumpPolicies(snap.Policies)
	d.PolicyProblems = snap.PolicyProblems
	d.Waypoints = z.dumpWaypoints(snap)
	d.WaypointProblems = snap.WaypointProblems
	st := z.pool.Stats()
	d.Pool = map[string]interface{}{"connections": st.Conns, "streams": st.Streams}
	return d
}

func (z *Ztunnel) dumpWaypoints(snap *discovery.Snapshot) []dumpWaypoint {
	out := []dumpWaypoint{}
	for _, wp := range snap.Waypoints {
		dw := dumpWaypoint{Name: wp.Ref(), For: string(wp.For), From: wp.From, Origin: wp.Origin, Pods: []string{}}
		for _, p := range wp.Pods {
			pod := p.Namespace + "/" + p.Name
			for _, ip := range p.IPs {
				pod += " " + ip.String()
			}
			if id, err := identity.WorkloadID(z.td, p.Namespace, p.ServiceAccount); err == nil {
				pod += " " + id.String()
			}
			dw.Pods = append(dw.Pods, pod)
		}
		out = append(out, dw)
	}
	return out
}

func (z *Ztunnel) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, z.Dump())
}

// writeJSON answers v, indented for people.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
