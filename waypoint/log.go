package waypoint

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Log messages are constant; details go in keyed attributes.
const (
	msgStarted       = "waypoint started"
	msgDraining      = "draining connections"
	msgRefused       = "connection refused"
	msgRequest       = "request"
	msgTCP           = "connection closed"
	msgTCPFailed     = "connection failed"
	msgUpstreamError = "upstream error"
	msgDenied        = "connection denied by policy"
	msgRouteProblem  = "route not accepted"
	msgMirrorFailed  = "mirrored request failed"
)

// Log keys; the access log's follow Istio's.
const (
	keyWaypoint  = "waypoint"
	keyAddr      = "addr"
	keyIdentity  = "src.identity"
	keySrc       = "src.addr"
	keyAuthority = "authority"
	keyUpstream  = "upstream"
	keyReason    = "reason"
	keyError     = "error"
	keyMethod    = "method"
	keyPath      = "path"
	keyStatus    = "response_code"
	keyFlags     = "response_flags"
	keyService   = "dst.service"
	keyBytesSent = "bytes_sent"
	keyBytesRecv = "bytes_recv"
	keyDuration  = "duration"
	keyPolicy    = "policy"
	keyRoute     = "route"
	keyParent    = "parent"
	keyCondition = "condition"
)

// logRequest writes the request's access-log line and records its metrics.
func (w *Waypoint) logRequest(r *http.Request, info *reqInfo, code int, d time.Duration) {
	svc := ""
	if t := info.in.t; t.svc != nil {
		svc = t.svc.Hostname
	}
	up := "-"
	if info.upstream.addr.IsValid() {
		up = info.upstream.addr.String()
	}
	attrs := []any{keySrc, info.in.client.String(), keyIdentity, info.in.peer,
		keyAuthority, info.in.t.authority.String(), keyService, svc, keyMethod, r.Method, keyPath, r.URL.Path,
		keyUpstream, up, keyStatus, code, keyFlags, info.flags, keyDuration, d.String()}
	if info.policy != "" {
		attrs = append(attrs, keyPolicy, info.policy)
	}
	w.log.Info(msgRequest, attrs...)
	w.m.request(info, strconv.Itoa(code), d)
}

// configDump serves what the waypoint is serving: itself and the bindings it takes.
func (w *Waypoint) configDump(rw http.ResponseWriter, _ *http.Request) {
	snap := w.store.Load()
	type svc struct {
		Name     string   `json:"name"`
		Hostname string   `json:"hostname"`
		VIPs     []string `json:"vips"`
	}
	d := struct {
		Waypoint string   `json:"waypoint"`
		Identity string   `json:"identity"`
		Declared bool     `json:"declared"`
		Services []svc    `json:"services"`
		Problems []string `json:"waypointProblems,omitempty"`
	}{Waypoint: w.ref, Identity: w.self.String(), Declared: snap.Waypoint(w.ref) != nil, Problems: snap.WaypointProblems}
	for _, s := range snap.Services {
		if s.Waypoint != w.ref {
			continue
		}
		e := svc{Name: s.Namespace + "/" + s.Name, Hostname: s.Hostname}
		for _, v := range s.VIPs {
			e.VIPs = append(e.VIPs, v.String())
		}
		d.Services = append(d.Services, e)
	}
	rw.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(rw)
	enc.SetIndent("", "  ")
	_ = enc.Encode(d)
}
