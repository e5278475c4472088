package ztunnel

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics use Istio's names and labels so existing dashboards work.
type metrics struct {
	opened, closed *prometheus.CounterVec
	sent, received *prometheus.CounterVec
	refused        *prometheus.CounterVec
}

var tcpLabels = []string{
	"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "connection_security_policy", "direction",
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened.",
		}, tcpLabels),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed.",
		}, tcpLabels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent from client to server.",
		}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total", Help: "Bytes sent from server to client.",
		}, tcpLabels),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_connections_refused_total", Help: "Connections refused before proxying, by direction.",
		}, []string{"direction"}),
	}
	reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.refused)
	return m
}

func splitNSName(s string) (ns, name string) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:]
		}
	}
	return "", s
}

func (m *metrics) labels(ci *connInfo) prometheus.Labels {
	reporter := "destination"
	if ci.Direction == "outbound" || ci.Direction == "local" {
		reporter = "source"
	}
	sns, sname := splitNSName(ci.SrcWorkload)
	dns, dname := splitNSName(ci.DstWorkload)
	return prometheus.Labels{
		"reporter":                       reporter,
		"source_workload":                orUnknown(sname),
		"source_workload_namespace":      orUnknown(sns),
		"source_principal":               orUnknown(ci.SrcIdentity),
		"destination_workload":           orUnknown(dname),
		"destination_workload_namespace": orUnknown(dns),
		"destination_principal":          orUnknown(ci.DstIdentity),
		"destination_service":            orUnknown(ci.DstService),
		"connection_security_policy":     ci.Security,
		"direction":                      ci.Direction,
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func timeSince(t time.Time) string { return time.Since(t).Round(time.Microsecond).String() }
