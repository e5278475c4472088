package ztunnel

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics use Istio's names and labels so existing dashboards work.
type metrics struct {
	opened, closed *prometheus.CounterVec
	sent, received *prometheus.CounterVec
	refused        *prometheus.CounterVec
	failed         *prometheus.CounterVec // tcpLabels and response_flags
	connectFails   *prometheus.CounterVec // connectLabels
	peerLimited    [numLimits]prometheus.Counter

	mu     sync.Mutex
	series map[seriesKey]*tcpSeries
}

// seriesKey is a label set's values in tcpLabels order.
type seriesKey [10]string

// tcpSeries are one label set's connection counters, looked up once: resolving them
// through the vectors costs a label map and ten validated, hashed values per counter,
// four counters per connection. Series are never deleted, so neither are these.
type tcpSeries struct {
	opened, closed, sent, received prometheus.Counter
}

var tcpLabels = []string{
	"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "connection_security_policy", "direction",
}

// connectLabels are those of ambit_endpoint_connect_failures_total: the endpoint's
// workload and service in Istio's names, and why it failed (the reason* constants).
var connectLabels = []string{
	"destination_workload", "destination_workload_namespace", "destination_service", "reason",
}

func newMetrics(reg prometheus.Registerer) *metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &metrics{
		opened:   counter("istio_tcp_connections_opened_total", "TCP connections opened.", tcpLabels...),
		closed:   counter("istio_tcp_connections_closed_total", "TCP connections closed.", tcpLabels...),
		sent:     counter("istio_tcp_sent_bytes_total", "Bytes sent from client to server.", tcpLabels...),
		received: counter("istio_tcp_received_bytes_total", "Bytes sent from server to client.", tcpLabels...),
		refused:  counter("ambit_connections_refused_total", "Connections refused before proxying, by direction.", "direction"),
		failed: counter("istio_tcp_connections_failed_total",
			"TCP connections refused or closed, by Istio's response_flags (DENY: by policy).", append(tcpLabels[:len(tcpLabels):len(tcpLabels)], "response_flags")...),
		connectFails: counter("ambit_endpoint_connect_failures_total",
			"Connects to a service endpoint that failed (the endpoint is then passed over for a while, and another one tried), by endpoint and reason.", connectLabels...),
		series: map[seriesKey]*tcpSeries{},
	}
	limited := counter("ambit_peer_limit_refused_total",
		"Connections refused because their peer identity was at a per-peer cap (503), by cap.", "limit")
	for k := range numLimits {
		m.peerLimited[k] = limited.WithLabelValues(k.String())
	}
	reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.refused, m.failed, m.connectFails, limited)
	return m
}

// forConn returns the counters of rec's label set.
func (m *metrics) forConn(rec *record) *tcpSeries {
	k := keyOf(rec)
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.series[k]; ok {
		return s
	}
	vals := k.values()
	s := &tcpSeries{
		opened:   m.opened.WithLabelValues(vals...),
		closed:   m.closed.WithLabelValues(vals...),
		sent:     m.sent.WithLabelValues(vals...),
		received: m.received.WithLabelValues(vals...),
	}
	m.series[k] = s
	return s
}

// denied counts rec as refused or closed by policy. Denials are rare: the series
// is not cached.
func (m *metrics) denied(rec *record) {
	m.failed.WithLabelValues(append(keyOf(rec).values(), "DENY")...).Inc()
}

// connectFailed counts a failed connect of rec to its endpoint. Failures are rare:
// the series is not cached.
func (m *metrics) connectFailed(rec *record, reason string) {
	vals := seriesKey{orUnknown(rec.DstWorkload.Name), orUnknown(rec.DstWorkload.Namespace),
		orUnknown(rec.Service.Hostname), reason}.values()[:len(connectLabels)]
	m.connectFails.WithLabelValues(vals...).Inc()
}

// upstreamFailed counts rec as refused because no endpoint connected: Envoy's UF
// (upstream connection failure).
func (m *metrics) upstreamFailed(rec *record) {
	m.failed.WithLabelValues(append(keyOf(rec).values(), "UF")...).Inc()
}

func keyOf(rec *record) seriesKey {
	return seriesKey{
		rec.Direction.reporter(),
		orUnknown(rec.SrcWorkload.Name), orUnknown(rec.SrcWorkload.Namespace), orUnknown(rec.SrcID.String()),
		orUnknown(rec.DstWorkload.Name), orUnknown(rec.DstWorkload.Namespace), orUnknown(rec.DstID.String()),
		orUnknown(rec.Service.Hostname), rec.security(), rec.Direction.String(),
	}
}

// values are k's label values. Prometheus refuses (WithLabelValues panics on)
// values that are not UTF-8; names and identities come from API objects and peer
// certificates.
func (k seriesKey) values() []string {
	vals := make([]string, len(k), len(k)+1)
	for i, v := range k {
		vals[i] = strings.ToValidUTF8(v, "\uFFFD")
	}
	return vals
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func timeSince(t time.Time) string { return time.Since(t).Round(time.Microsecond).String() }
