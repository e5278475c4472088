package ztunnel

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestMetricsForConn(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	out := &connInfo{ConnInfo: ConnInfo{
		Direction: "outbound", SrcWorkload: "mesh/client", DstWorkload: "mesh/server",
		SrcIdentity: "spiffe://cluster.local/ns/mesh/sa/client", Security: "mutual_tls",
	}}
	in := &connInfo{ConnInfo: out.ConnInfo}
	in.Direction = "inbound"
	bad := &connInfo{ConnInfo: out.ConnInfo}
	bad.SrcWorkload = "mesh/\xffclient"

	s := m.forConn(out)
	if again := m.forConn(&connInfo{ConnInfo: out.ConnInfo}); again != s {
		t.Error("the same label set resolved to a second series")
	}
	if m.forConn(in) == s {
		t.Error("another direction shares the outbound series")
	}
	s.opened.Inc()
	s.sent.Add(42)
	m.forConn(bad).opened.Inc() // not a panic: the value is made valid UTF-8

	tests := []struct {
		name   string
		vec    *prometheus.CounterVec
		labels []string
		want   float64
	}{
		{"outbound opened, reported by the source", m.opened, []string{"source", "client", "mesh", "spiffe://cluster.local/ns/mesh/sa/client",
			"server", "mesh", "unknown", "unknown", "mutual_tls", "outbound"}, 1},
		{"outbound bytes sent", m.sent, []string{"source", "client", "mesh", "spiffe://cluster.local/ns/mesh/sa/client",
			"server", "mesh", "unknown", "unknown", "mutual_tls", "outbound"}, 42},
		{"inbound, reported by the destination, untouched", m.opened, []string{"destination", "client", "mesh", "spiffe://cluster.local/ns/mesh/sa/client",
			"server", "mesh", "unknown", "unknown", "mutual_tls", "inbound"}, 0},
		{"invalid UTF-8 replaced", m.opened, []string{"source", "\uFFFDclient", "mesh", "spiffe://cluster.local/ns/mesh/sa/client",
			"server", "mesh", "unknown", "unknown", "mutual_tls", "outbound"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d dto.Metric
			if err := tt.vec.WithLabelValues(tt.labels...).Write(&d); err != nil {
				t.Fatal(err)
			}
			if got := d.GetCounter().GetValue(); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
