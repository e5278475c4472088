package waypoint

import (
	"strconv"
	"sync"
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

func (m *metrics) request(info *reqInfo, code int, d time.Duration, reqBytes, respBytes int64) {
	o := info.in.obs.get(m, info, code)
	o.requests.Inc()
	o.duration.Observe(float64(d.Microseconds()) / 1000)
	o.requestBytes.Observe(float64(reqBytes))
	o.responseBytes.Observe(float64(respBytes))
}

// observers are the series of one label set.
type observers struct {
	requests                              prometheus.Counter
	duration, requestBytes, responseBytes prometheus.Observer
}

// obsKey is what varies between the requests of one stream: the rest of the labels
// (source, destination service) is the stream's.
type obsKey struct {
	code  int
	flags string
	grpc  bool
	dst   *discovery.Workload
}

// maxStreamObservers bounds the label sets a stream remembers; past it the oldest goes.
const maxStreamObservers = 8

// obsCache remembers a stream's series, so that a request of a keep-alive stream costs
// no label lookup (12 label values hashed for each of 4 metrics). Requests of an HTTP/2
// stream run concurrently.
type obsCache struct {
	mu      sync.Mutex
	entries []obsEntry
}

type obsEntry struct {
	key obsKey
	obs observers
}

func (c *obsCache) get(m *metrics, info *reqInfo, code int) observers {
	key := obsKey{code: code, flags: info.flags, grpc: info.grpc, dst: workloadOf(info)}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if c.entries[i].key == key {
			return c.entries[i].obs
		}
	}
	lv := m.labels(info, strconv.Itoa(code))
	o := observers{
		requests: m.requests.WithLabelValues(lv...), duration: m.duration.WithLabelValues(lv...),
		requestBytes: m.requestBytes.WithLabelValues(lv...), responseBytes: m.responseBytes.WithLabelValues(lv...),
	}
	if len(c.entries) >= maxStreamObservers {
		c.entries = c.entries[1:]
	}
	c.entries = append(c.entries, obsEntry{key: key, obs: o})
	return o
}

// labels are the requestLabels' values of a request.
func (m *metrics) labels(info *reqInfo, code string) []string {
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
	return []string{"waypoint", info.in.peer, srcW, srcNS, dstSvc, dstName, dstNS, dstW, dstWNS, proto, code, info.flags}
}

func workloadOf(info *reqInfo) *discovery.Workload {
	if info.upstream.workload != nil {
		return info.upstream.workload
	}
	return info.in.t.workload
}

// clusterCollector exports the clusters' state with the names Envoy's cluster
// statistics have in Istio's Prometheus output (label cluster_name), read at scrape time.
type clusterCollector struct{ c *clusters }

var (
	descRqActive        = clusterDesc("envoy_cluster_upstream_rq_active", "Requests in flight to the cluster.")
	descCxActive        = clusterDesc("envoy_cluster_upstream_cx_active", "Connections counted by the cluster's connection breaker.")
	descPendingOverflow = clusterDesc("envoy_cluster_upstream_rq_pending_overflow", "Requests refused by the pending or max requests breakers (503 UO).")
	descCxOverflow      = clusterDesc("envoy_cluster_upstream_cx_overflow", "Connections refused by the max connections breaker (503 UO).")
	descRetry           = clusterDesc("envoy_cluster_upstream_rq_retry", "Retries sent.")
	descRetryOverflow   = clusterDesc("envoy_cluster_upstream_rq_retry_overflow", "Retries refused by the retry breaker or budget.")
	descEjectActive     = clusterDesc("envoy_cluster_outlier_detection_ejections_active", "Endpoints ejected now.")
	descEjectEnforced   = clusterDesc("envoy_cluster_outlier_detection_ejections_enforced_total", "Ejections enforced.")
	descEjectOverflow   = clusterDesc("envoy_cluster_outlier_detection_ejections_overflow", "Ejections refused by maxEjectionPercent.")
	descHealthy         = clusterDesc("envoy_cluster_membership_healthy", "Endpoints not ejected.")
	descTotal           = clusterDesc("envoy_cluster_membership_total", "Endpoints of the cluster.")
)

func clusterDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, []string{"cluster_name"}, nil)
}

func (cc clusterCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(cc, ch) }

func (cc clusterCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range cc.c.statuses() {
		n, b := st.Name, st.Breakers
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, n)
		}
		counter := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), n)
		}
		gauge(descRqActive, float64(b.Requests))
		gauge(descCxActive, float64(b.Connections))
		counter(descPendingOverflow, b.PendingOverflows+b.RequestOverflows)
		counter(descCxOverflow, b.ConnectionOverflows)
		counter(descRetry, b.RetriesTotal)
		counter(descRetryOverflow, b.RetryOverflows)
		healthy := 0
		for _, e := range st.Endpoints {
			if e.Health == "healthy" {
				healthy++
			}
		}
		gauge(descHealthy, float64(healthy))
		gauge(descTotal, float64(len(st.Endpoints)))
		if o := st.Outlier; o != nil {
			gauge(descEjectActive, float64(o.EjectionsActive))
			counter(descEjectEnforced, o.EjectionsEnforced)
			counter(descEjectOverflow, o.EjectionsOverflow)
		}
	}
}
