package waypoint

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/waypoint/route"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// A request's life at its cluster, the same on both data paths: the request breaker
// from the pick to the end of the response, the endpoint's active-request count and
// outlier result per attempt, and before a retry the retry breaker and back-off.

// Istio's default retry policy: 2 retries of connect failures, refused streams and
// gRPC UNAVAILABLE / CANCELLED, each on another endpoint.
const defaultRetries = 2

// retryPolicy is what a request may retry, from its HTTPRoute rule or Istio's default.
type retryPolicy struct {
	retries int
	codes   []int
	base    time.Duration // back-off base; the cap is 10x (Envoy's)
}

func retryPolicyOf(rule *route.Rule) retryPolicy {
	p := retryPolicy{retries: defaultRetries, base: upstream.DefaultRetryBase}
	if rule != nil && rule.Retry != nil {
		if rule.Retry.Attempts >= 0 {
			p.retries = rule.Retry.Attempts
		}
		p.codes = rule.Retry.Codes
		if rule.Retry.Backoff > 0 {
			p.base = rule.Retry.Backoff
		}
	}
	return p
}

// startRequest takes the request breaker of the chosen cluster; false: overflow (UO).
func (info *reqInfo) startRequest() bool {
	c := info.upstream.cluster
	if c == nil {
		return true
	}
	release, err := c.StartRequest()
	if err != nil {
		return false
	}
	info.releases = append(info.releases, release)
	return true
}

// finish releases what the request held at its cluster.
func (info *reqInfo) finish() {
	for _, r := range info.releases {
		r()
	}
	info.releases = nil
}

// maxPerConn is the cluster's maxRequestsPerConnection (0: unlimited).
func (info *reqInfo) maxPerConn() uint32 {
	if c := info.upstream.cluster; c != nil {
		return c.Policy().Limits.MaxRequestsPerConnection
	}
	return 0
}

// connSpent: an upstream connection that carried n requests has reached the cluster's
// maxRequestsPerConnection.
func (info *reqInfo) connSpent(n uint32) bool {
	max := info.maxPerConn()
	return max > 0 && n >= max
}

// idleTimeout is how long an idle upstream connection of the request's cluster may be
// reused: its DestinationRule's idleTimeout, else Istio's hour.
func (info *reqInfo) idleTimeout() time.Duration {
	if c := info.upstream.cluster; c != nil {
		if t := c.Policy().Limits.IdleTimeout; t > 0 {
			return t
		}
	}
	return fastIdleTimeout
}

// startAttempt counts an attempt on the current endpoint; end reports its result once.
func (info *reqInfo) startAttempt() (end func(upstream.Result)) {
	h := info.upstream.host
	if h == nil {
		return func(upstream.Result) {}
	}
	info.tried = append(info.tried, h)
	done := h.Start()
	ended := false
	return func(r upstream.Result) {
		if !ended {
			ended = true
			done(r)
		}
	}
}

// nextAttempt prepares retry k (1-based): the retry breaker, the back-off and another
// endpoint. False when the request must stop with what it has.
func (w *Waypoint) nextAttempt(ctx context.Context, info *reqInfo, rp retryPolicy, k int) bool {
	if c := info.upstream.cluster; c != nil {
		release, ok := c.TryRetry()
		if !ok {
			return false
		}
		info.releases = append(info.releases, release)
	}
	if d := upstream.Backoff(rp.base, 10*rp.base, k, rand.Uint64); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
	}
	if info.svc == nil {
		return true
	}
	up, err := w.upstreamOf(info.in, info.svc, info.port, info.req, info.tried)
	if err != nil {
		return false
	}
	info.upstream = up.upEndpoint
	return true
}

// failure is how a forward that got no response is answered, as Envoy does: 503 with
// UF (connection failure), UO (a circuit breaker) or UC (the connection ended before a
// response), 504 UT on a timeout, 499 DC when the client went away.
func failure(err error) (code int, flag, msg string) {
	code, flag, msg = http.StatusServiceUnavailable, "UC", "upstream connect error or disconnect/reset before headers"
	var ne net.Error
	switch {
	case errors.Is(err, upstream.ErrOverflow):
		flag, msg = "UO", "upstream overflow"
	case errors.Is(err, errDial):
		flag = "UF"
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		code, flag, msg = http.StatusGatewayTimeout, "UT", "upstream request timeout"
	case errors.Is(err, context.Canceled):
		code, flag = 499, "DC"
	case errors.Is(err, errRetriesExhausted):
		flag = "URX"
	}
	return code, flag, msg
}

// fail sets the request's flags for err (URX joined when retries ran out) and returns
// the status and body to answer.
func (info *reqInfo) fail(err error) (code int, msg string) {
	code, flag, msg := failure(err)
	if info.flags == "URX" && flag != "URX" {
		flag += ",URX"
	}
	info.flags = flag
	return code, msg
}

// localOrigin classifies a failure without a response for the outlier detector.
func localOrigin(err error) upstream.LocalOrigin {
	switch _, flag, _ := failure(err); flag {
	case "UF":
		return upstream.ConnectFailed
	case "UT":
		return upstream.Timeout
	}
	return upstream.Reset
}

// refusedStream: the upstream's HTTP/2 server refused the stream before processing it
// (safe to retry, Istio's refused-stream).
func refusedStream(err error) bool {
	return err != nil && strings.Contains(err.Error(), "REFUSED_STREAM")
}

// retryableGRPC: Istio's default retries gRPC UNAVAILABLE (14) and CANCELLED (1).
func retryableGRPC(h http.Header) bool {
	s := h.Get("Grpc-Status")
	return s == "14" || s == "1"
}

// hashInput is the consistent-hash input of req (nil: a TCP stream, its source only).
func hashInput(in *inbound, req *route.Request) upstream.HashInput {
	if req == nil {
		return upstream.HashInput{Source: in.client}
	}
	return upstream.HashInput{
		Source: in.client,
		Header: func(name string) []string { return req.Header.Values(name) },
		Cookie: func(name string) (string, bool) {
			for _, line := range req.Header["Cookie"] {
				if cs, err := http.ParseCookie(line); err == nil {
					for _, c := range cs {
						if c.Name == name {
							return c.Value, true
						}
					}
				}
			}
			return "", false
		},
		Query: func(name string) (string, bool) {
			q, err := url.ParseQuery(req.RawQuery)
			if err != nil || !q.Has(name) {
				return "", false
			}
			return q.Get(name), true
		},
	}
}

// setCookieLine is the Set-Cookie value that keeps a client on its hash.
func setCookieLine(sc *upstream.SetCookie) string {
	c := &http.Cookie{Name: sc.Name, Value: sc.Value, Path: sc.Path, HttpOnly: true}
	if sc.MaxAge > 0 {
		c.MaxAge = int(sc.MaxAge / time.Second)
	}
	line := c.String()
	for _, a := range sc.Attributes {
		line += "; " + a.Name
		if a.Value != "" {
			line += "=" + a.Value
		}
	}
	return line
}
