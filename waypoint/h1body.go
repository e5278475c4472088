package waypoint

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// maxBufferedBody is the largest request body of a declared length that is read whole
// before the request is forwarded. net/http's Transport flushes the headers of a request
// on their own unless it knows the body to be in memory, which costs a second write and
// TLS record per request: buffered, headers and body leave together.
const maxBufferedBody = 16 << 10

// bufferBody returns the outbound request r with a small body of known length read
// into memory (the ReverseProxy hands the Transport a wrapper it cannot see through).
// Bodies of unknown length (chunked, streaming gRPC) or larger, and requests waiting for
// a 100 Continue, stream as they come.
func bufferBody(r *http.Request) (*http.Request, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength <= 0 || r.ContentLength > maxBufferedBody || r.Header.Get("Expect") != "" {
		return r, nil
	}
	b := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, b); err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	out := r.WithContext(r.Context())
	out.Body = io.NopCloser(bytes.NewReader(b))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil } // for retries
	return out, nil
}

// responseFlushInterval is the ReverseProxy's FlushInterval: 0, so a response of known
// length leaves in one write when done (or as the buffer fills). A negative interval
// flushes its headers alone first, from a timer goroutine: a second write, TLS record and
// goroutine per response. Streaming responses (no length: gRPC, chunked; server-sent
// events) are flushed after every write whatever the interval.
const responseFlushInterval time.Duration = 0

// copyBufferSize is the ReverseProxy's buffer for response bodies (its own default).
const copyBufferSize = 32 << 10

// copyBuffers lends the ReverseProxy its body buffers: without a pool it allocates 32 KiB
// per response, two thirds of the bytes a request allocated.
var copyBuffers bufferPool

type bufferPool struct{ p sync.Pool }

func (bp *bufferPool) Get() []byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, copyBufferSize)
}

func (bp *bufferPool) Put(b []byte) {
	if cap(b) == copyBufferSize {
		b = b[:copyBufferSize]
		bp.p.Put(&b)
	}
}
