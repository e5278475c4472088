package waypoint

import (
	"net/http"
	"net/url"
	"strconv"
)

// gRPC status codes the waypoint answers with (google.golang.org/grpc/codes values).
const (
	grpcUnknown          = 2
	grpcPermissionDenied = 7
	grpcUnimplemented    = 12
	grpcInternal         = 13
	grpcUnavailable      = 14
	grpcUnauthenticated  = 16
)

// grpcStatusOf maps an HTTP status to gRPC's, as gRPC's HTTP-to-gRPC status mapping
// and Envoy's local replies do.
func grpcStatusOf(code int) int {
	switch code {
	case http.StatusBadRequest:
		return grpcInternal
	case http.StatusUnauthorized:
		return grpcUnauthenticated
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return grpcUnavailable
	case http.StatusInternalServerError:
		return grpcInternal
	}
	return grpcUnknown
}

// localReply answers a request the waypoint does not forward. A gRPC client gets a
// trailers-only response (HTTP 200, grpc-status and grpc-message in the headers), as
// Envoy sends: a gRPC client reads a bare HTTP error as a transport failure.
func localReply(w http.ResponseWriter, info *reqInfo, code int, msg string) {
	if info == nil || !info.grpc {
		http.Error(w, msg, code)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(grpcStatusOf(code)))
	// grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
	h.Set("Grpc-Message", url.PathEscape(msg))
	w.WriteHeader(http.StatusOK)
}
