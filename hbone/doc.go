// Package hbone implements HBONE, the mesh tunnel protocol shared with Istio
// ztunnel: plain HTTP/2 CONNECT (RFC 9113 section 8.5) over mutually
// authenticated TLS 1.3 with ALPN "h2", peers identified by SPIFFE IDs.
//
// The HTTP/2 connection handling is our own, built on the Framer and HPACK of
// golang.org/x/net/http2: large flow-control windows with batched
// WINDOW_UPDATEs, real half-close in both directions, one write queue per
// connection that coalesces frames into as few TLS records and syscalls as
// possible (drained by the goroutine that wants its frames out when nobody else
// is writing, else by the connection's writer goroutine), keepalive PINGs and
// graceful GOAWAY. Streams implement io.WriterTo, so io.Copy from a stream
// writes straight out of its receive buffer. crypto/tls performs the TLS
// handshake; the records after it are by default this package's own (record.go),
// so that a batch of frames is sealed in one buffer and received records are opened
// straight into the stream buffers. RecordsCryptoTLS (ClientConfig.Records,
// ServerConfig.Records) keeps crypto/tls's tls.Conn for the whole connection
// instead; the two interoperate.
//
// Client side: a Pool dials CONNECT streams (*Conn) over connections pooled
// by (source identity, destination identity, address); Dial waits for the
// answer, DialEarly lets data follow the request at once and reports a refusal
// on Read/Write (one round trip less per connection). Server side: a Server
// hands each validated CONNECT request to a Handler as a *Stream, which the
// handler answers with Accept or Reject. The wire protocol is specified in
// docs/hbone.md.
package hbone
