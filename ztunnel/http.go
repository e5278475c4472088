package ztunnel

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/ambitmesh/ambit/identity"
)

// startHTTP starts readiness (:15021), metrics (:15020) and admin (localhost:15000).
func (z *Ztunnel) startHTTP(g *errgroup.Group) ([]*http.Server, error) {
	ready := http.NewServeMux()
	ready.HandleFunc("/healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if err := z.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(z.reg, promhttp.HandlerOpts{}))
	admin := http.NewServeMux()
	admin.HandleFunc("/config_dump", z.serveConfigDump)
	admin.HandleFunc("/healthz/ready", ready.ServeHTTP)
	// Profiling on the admin port only (localhost by default).
	admin.HandleFunc("/debug/pprof/", pprof.Index)
	admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
	admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	admin.HandleFunc("/debug/pprof/trace", pprof.Trace)

	var srvs []*http.Server
	for _, s := range []struct {
		addr string
		h    http.Handler
	}{{z.cfg.ReadinessAddr, ready}, {z.cfg.MetricsAddr, metrics}, {z.cfg.AdminAddr, admin}} {
		if s.addr == "off" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			for _, p := range srvs {
				p.Close()
			}
			return nil, fmt.Errorf("listen %s: %w", s.addr, err)
		}
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, srv)
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				z.log.Error(msgHTTPError, keyAddr, s.addr, keyError, err)
			}
			return nil
		})
	}
	return srvs, nil
}

// ConfigDump is the admin view of a node.
type ConfigDump struct {
	Node         string                 `json:"node"`
	TrustDomain  string                 `json:"trustDomain"`
	Ready        string                 `json:"ready"`
	ModelVersion uint64                 `json:"modelVersion"`
	Workloads    []dumpWorkload         `json:"workloads"`
	Services     []dumpService          `json:"services"`
	Certificates []identity.CertInfo    `json:"certificates"`
	Captured     map[string]int         `json:"capturedPods"`
	Connections  []ConnInfo             `json:"connections"`
	Pool         map[string]interface{} `json:"hbonePool"`
	Problems     any                    `json:"modelProblems,omitempty"`
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
}

type dumpService struct {
	Hostname  string   `json:"hostname"`
	VIPs      []string `json:"vips"`
	Ports     []string `json:"ports"`
	Endpoints []string `json:"endpoints"`
}

// Dump returns the current admin view.
func (z *Ztunnel) Dump() ConfigDump {
	snap := z.store.Load()
	d := ConfigDump{
		Node:         z.cfg.NodeName,
		TrustDomain:  z.cfg.TrustDomain,
		Ready:        "ok",
		ModelVersion: snap.Version,
		Certificates: z.ident.Certificates(),
		Captured:     map[string]int{},
		Connections:  z.conns.snapshot(),
	}
	if err := z.Ready(); err != nil {
		d.Ready = err.Error()
	}
	for _, w := range snap.Workloads {
		dw := dumpWorkload{UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Node: w.Node, Protocol: string(w.Protocol), Local: w.Node == z.cfg.NodeName}
		for _, ip := range w.IPs {
			dw.IPs = append(dw.IPs, ip.String())
		}
		if id, err := identity.WorkloadID(z.td, w.Namespace, w.ServiceAccount); err == nil {
			dw.Identity = id.String()
		}
		d.Workloads = append(d.Workloads, dw)
	}
	for _, s := range snap.Services {
		ds := dumpService{Hostname: s.Hostname}
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
	st := z.pool.Stats()
	d.Pool = map[string]interface{}{"connections": st.Conns, "streams": st.Streams}
	return d
}

func (z *Ztunnel) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(z.Dump())
}
