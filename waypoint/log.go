package waypoint

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// Log messages are constant; details go in keyed attributes.
const (
	msgStarted        = "waypoint started"
	msgDraining       = "draining connections"
	msgRefused        = "connection refused"
	msgRequest        = "request"
	msgTCP            = "connection closed"
	msgTCPFailed      = "connection failed"
	msgUpstreamError  = "upstream error"
	msgDenied         = "connection denied by policy"
	msgPolicyClosed   = "connection closed by policy"
	msgRouteProblem   = "route not accepted"
	msgMirrorFailed   = "mirrored request failed"
	msgTrafficProblem = "destination rule not applied"
	msgTrafficWarning = "destination rule field not applied"
	msgEjected        = "endpoint ejected"
	msgReturned       = "endpoint returned"
	msgOverflow       = "circuit breaker overflow"
)

// Log keys; the access log's follow Istio's.
const (
	keyWaypoint   = "waypoint"
	keyAddr       = "addr"
	keyIdentity   = "src.identity"
	keySrc        = "src.addr"
	keyAuthority  = "authority"
	keyUpstream   = "upstream"
	keyReason     = "reason"
	keyError      = "error"
	keyMethod     = "method"
	keyPath       = "path"
	keyStatus     = "response_code"
	keyFlags      = "response_flags"
	keyService    = "dst.service"
	keyBytesSent  = "bytes_sent"
	keyBytesRecv  = "bytes_recv"
	keyDuration   = "duration"
	keyPolicy     = "policy"
	keyGRPCStatus = "grpc_status"
	keyRoute      = "route"
	keyParent     = "parent"
	keyCondition  = "condition"
	keyCluster    = "cluster"
	keyUntil      = "until"
	keyLimit      = "limit"
)

// logRequest writes the request's access-log line and records its metrics.
func (w *Waypoint) logRequest(r *http.Request, info *reqInfo, sw *statusWriter, d time.Duration) {
	grpcStatus := ""
	if info.grpc {
		grpcStatus = sw.Header().Get("Grpc-Status")
	}
	w.accessLog(r.Method, r.URL.Path, sw.status(), sw.n, grpcStatus, info, d)
}

// logFast is logRequest for a request of the HTTP/1.1 fast path.
func (w *Waypoint) logFast(rec *fastRecord, info *reqInfo, d time.Duration) {
	w.accessLog(rec.method, rec.path, rec.code, rec.sent, "", info, d)
}

// accessLog writes the access-log line and records the metrics. The record goes to the
// logger's handler directly: no caller's PC is taken (the handler adds no source), the
// stream's address strings are made once.
func (w *Waypoint) accessLog(method, path string, code int, sent int64, grpcStatus string, info *reqInfo, d time.Duration) {
	if ctx := context.Background(); w.log.Enabled(ctx, slog.LevelInfo) {
		svc := ""
		if t := info.in.t; t.svc != nil {
			svc = t.svc.Hostname
		}
		up := "-"
		if info.upstream.addr.IsValid() {
			up = info.in.upstreamStr(info.upstream.addr)
		}
		client, authority := info.in.clientStr, info.in.authorityStr
		if client == "" { // an inbound made elsewhere (tests)
			client, authority = info.in.client.String(), info.in.t.authority.String()
		}
		r := slog.NewRecord(time.Now(), slog.LevelInfo, msgRequest, 0)
		r.AddAttrs(slog.String(keySrc, client), slog.String(keyIdentity, info.in.peer),
			slog.String(keyAuthority, authority), slog.String(keyService, svc),
			slog.String(keyMethod, method), slog.String(keyPath, path), slog.String(keyUpstream, up),
			slog.Int(keyStatus, code), slog.String(keyFlags, info.flags), slog.String(keyDuration, d.String()),
			slog.Int64(keyBytesRecv, info.body.n), slog.Int64(keyBytesSent, sent))
		if info.grpc {
			r.AddAttrs(slog.String(keyGRPCStatus, grpcStatus))
		}
		if info.policy != "" {
			r.AddAttrs(slog.String(keyPolicy, info.policy))
		}
		_ = w.log.Handler().Handle(ctx, r)
	}
	w.m.request(info, code, d, info.body.n, sent)
}

// configDump serves what the waypoint is serving: itself, the bindings it takes, the
// policies attached to each, and the routes with their status.
func (w *Waypoint) configDump(rw http.ResponseWriter, _ *http.Request) {
	snap := w.store.Load()
	type svc struct {
		Name      string   `json:"name"`
		Hostname  string   `json:"hostname"`
		VIPs      []string `json:"vips"`
		Endpoints []string `json:"endpoints"`
		Policies  []string `json:"policies,omitempty"`
	}
	type cond struct {
		Parent, Type, Status, Reason, Message string
	}
	type rt struct {
		Route      string `json:"route"`
		Conditions []cond `json:"conditions"`
	}
	d := struct {
		Waypoint string   `json:"waypoint"`
		Identity string   `json:"identity"`
		Declared bool     `json:"declared"`
		Services []svc    `json:"services"`
		Routes   []rt     `json:"routes"`
		Problems []string `json:"waypointProblems,omitempty"`
		// Clusters are the Service ports forwarded to so far: policy, endpoints with
		// their load and health, breakers, outlier detection.
		Clusters        []upstream.ClusterStatus `json:"clusters"`
		TrafficProblems []string                 `json:"trafficProblems,omitempty"`
	}{Waypoint: w.ref, Identity: w.self.String(), Declared: snap.Waypoint(w.ref) != nil, Problems: snap.WaypointProblems}
	tr := w.trafficFor(snap)
	d.TrafficProblems = slices.Clone(snap.TrafficProblems)
	for _, err := range tr.problems.Errors {
		d.TrafficProblems = append(d.TrafficProblems, err.Error())
	}
	d.TrafficProblems = append(d.TrafficProblems, tr.problems.Warnings...)
	d.Clusters = w.clusters.statuses()
	slices.SortFunc(d.Clusters, func(a, b upstream.ClusterStatus) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range snap.Services {
		if s.Waypoint != w.ref {
			continue
		}
		e := svc{Name: s.Namespace + "/" + s.Name, Hostname: s.Hostname}
		for _, v := range s.VIPs {
			e.VIPs = append(e.VIPs, v.String())
		}
		for _, ep := range s.Endpoints {
			e.Endpoints = append(e.Endpoints, ep.Addr.String())
		}
		for _, p := range w.policiesFor(snap, target{svc: s}).Authorizations() {
			e.Policies = append(e.Policies, p.Ref())
		}
		d.Services = append(d.Services, e)
	}
	for _, st := range w.routesFor(snap).statuses {
		r := rt{Route: st.Kind + " " + st.Namespace + "/" + st.Name}
		for _, ps := range st.Parents {
			for _, c := range ps.Conditions {
				r.Conditions = append(r.Conditions, cond{Parent: string(ps.ParentRef.Name), Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message})
			}
		}
		d.Routes = append(d.Routes, r)
	}
	rw.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(rw)
	enc.SetIndent("", "  ")
	_ = enc.Encode(d)
}
