package waypoint

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambitmesh/ambit/discovery"
)

// metrics are Istio's request metrics, reported by the waypoint.
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	requestBytes  *prometheus.HistogramVec
	responseBytes *prometheus.HistogramVec
}

// sizeBuckets are Istio's for request and response sizes (body bytes).
var sizeBuckets = prometheus.ExponentialBuckets(1, 10, 8)

var requestLabels = []string{
	"reporter", "source_principal", "source_workload", "source_workload_namespace",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_workload", "destination_workload_namespace",
	"request_protocol", "response_code", "response_flags",
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests handled by the waypoint.",
		}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "istio_request_duration_milliseconds",
			Help:    "Duration of the requests handled by the waypoint.",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000},
		}, requestLabels),
	}
	m.requestBytes = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "istio_request_bytes", Help: "Body sizes of the requests handled by the waypoint.", Buckets: sizeBuckets,
	}, requestLabels)
	m.responseBytes = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "istio_response_bytes", Help: "Body sizes of the responses sent by the waypoint.", Buckets: sizeBuckets,
	}, requestLabels)
	reg.MustRegister(m.requests, m.duration, m.requestBytes, m.responseBytes)
	return m
}

func (m *metrics) request(info *reqInfo, code string, d time.Duration, reqBytes, respBytes int64) {
	srcW, srcNS := "unknown", "unknown"
	if w := info.in.snap.WorkloadByIP(info.in.client.Addr()); w != nil {
		srcW, srcNS = w.Name, w.Namespace
	}
	dstSvc, dstName, dstNS := "unknown", "unknown", "unknown"
	if s := info.in.t.svc; s != nil {
		dstSvc, dstName, dstNS = s.Hostname, s.Name, s.Namespace
	}
	dstW, dstWNS := "unknown", "unknown"
	if w := workloadOf(info); w != nil {
		dstW, dstWNS = w.Name, w.Namespace
	}
	proto := "http"
	if info.grpc {
		proto = "grpc"
	}
	lv := []string{"waypoint", info.in.peer, srcW, srcNS, dstSvc, dstName, dstNS, dstW, dstWNS, proto, code, info.flags}
	m.requests.WithLabelValues(lv...).Inc()
	m.duration.WithLabelValues(lv...).Observe(float64(d.Microseconds()) / 1000)
	m.requestBytes.WithLabelValues(lv...).Observe(float64(reqBytes))
	m.responseBytes.WithLabelValues(lv...).Observe(float64(respBytes))
}

func workloadOf(info *reqInfo) *discovery.Workload {
	if info.upstream.workload != nil {
		return info.upstream.workload
	}
	return info.in.t.workload
}
