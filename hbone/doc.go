// Package hbone implements HBONE, the mesh tunnel protocol shared with Istio
// ztunnel: plain HTTP/2 CONNECT (RFC 9113 section 8.5) over mutually
// authenticated TLS 1.3 with ALPN "h2", peers identified by SPIFFE IDs.
//
// The HTTP/2 connection handling is our own, built on the Framer and HPACK of
// golang.org/x/net/http2: large flow-control windows with batched
// WINDOW_UPDATEs, real half-close in both directions, one writer per
// connection that coalesces frames into as few TLS records and syscalls as
// possible, keepalive PINGs and graceful GOAWAY.
//
// Client side: a Pool dials CONNECT streams (*Conn) over connections pooled
// by (source identity, destination identity, address). Server side: a Server
// hands each validated CONNECT request to a Handler as a *Stream, which the
// handler answers with Accept or Reject. The wire protocol is specified in
// docs/hbone.md.
package hbone
