//go:build tools

// Package tools pins Istio's echo server and client (istio.io/istio/pkg/test/echo), the
// backends of the waypoint's end-to-end tests, to the Istio version of go.mod.
package tools

import (
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)
