package ztunnel

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestMetricsForConn(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	client := workloadRef{Namespace: "mesh", Name: "client", UID: "mesh/client"}
	server := workloadRef{Namespace: "mesh", Name: "server", UID: "mesh/server"}
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/client")
	conn := func(dir direction, src workloadRef) *record {
		rec := newRecord(dir, netip.AddrPort{}, netip.AddrPort{})
		rec.SrcWorkload, rec.DstWorkload, rec.SrcID, rec.MutualTLS = src, server, clientID, true
		return rec
	}
	out := conn(dirOutbound, client)
	in := conn(dirInboundHBONE, client)
	bad := conn(dirOutbound, workloadRef{Namespace: "mesh", Name: "\xffclient"})

	s := m.forConn(out)
	if again := m.forConn(conn(dirOutbound, client)); again != s {
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
