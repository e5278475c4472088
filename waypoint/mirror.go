package waypoint

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/waypoint/route"
)

// maxMirrorLag is how far a mirror may fall behind the request body the primary
// upstream reads; past it the mirror is abandoned, never the request held back.
const maxMirrorLag = 256 << 10

// mirrorTimeout bounds a mirrored request, which nobody waits for.
const mirrorTimeout = 10 * time.Second

var (
	errMirrorBehind = errors.New("mirror fell behind the request body")
	errMirrorCut    = errors.New("request ended before its body was read")
)

// mirror sends a copy of the request to each sampled mirror backend, in the background,
// as Envoy does: Host gets "-shadow", the answer is dropped. The body is teed while the
// primary upstream reads it, so a streamed body of unknown length (gRPC, chunked) is
// mirrored too without being buffered first. The returned function ends the copies of
// the body; call it when the request is done.
func (f *httpFront) mirror(r *http.Request, req *route.Request, info *reqInfo) (done func()) {
	var tee *teeBody
	hasBody := r.Body != nil && r.Body != http.NoBody
	if hasBody {
		tee = &teeBody{src: r.Body}
		r.Body = tee
	}
	for i := range info.rule.Mirrors {
		m := &info.rule.Mirrors[i]
		if !m.Sample(rand.Uint64()) {
			continue
		}
		svc := info.in.snap.ServiceByName(m.Backend.Namespace, m.Backend.Name)
		if svc == nil || svc.Port(m.Backend.Port) == nil {
			continue
		}
		up, err := f.w.pickEndpoint(info.in, svc, svc.Port(m.Backend.Port), req, nil)
		if err != nil {
			continue
		}
		mi := &reqInfo{in: info.in, svc: svc, port: svc.Port(m.Backend.Port), upstream: up.upEndpoint, flags: "-"}
		ctx, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(r.Context()), keyRequest, mi), mirrorTimeout)
		out := r.Clone(ctx)
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = "http", up.addr.String()
		if setPath(out.URL, req.Path) != nil {
			cancel()
			continue
		}
		out.Host = shadowHost(req.Host)
		out.Body = http.NoBody
		if hasBody {
			out.Body = tee.add()
		}
		h2 := protocolOf(mi.port) == protoHTTP2 || r.ProtoMajor == 2
		go func() {
			defer cancel()
			resp, err := f.transport(info.in.client, h2, mi.idleTimeout()).RoundTrip(out)
			if err != nil {
				f.w.log.Debug(msgMirrorFailed, keyUpstream, up.addr.String(), keyError, err.Error())
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	return func() {
		if tee != nil {
			tee.end(errMirrorCut)
		}
	}
}

// shadowHost is Envoy's Host of a mirrored request: "-shadow" after the host name.
func shadowHost(host string) string {
	if h, port, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h+"-shadow", port)
	}
	return host + "-shadow"
}

// teeBody is a request body whose reads are copied to mirror bodies.
type teeBody struct {
	src     io.ReadCloser
	mirrors []*mirrorBody
}

func (t *teeBody) add() *mirrorBody {
	m := &mirrorBody{}
	m.cond.L = &m.mu
	t.mirrors = append(t.mirrors, m)
	return m
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	for _, m := range t.mirrors {
		m.write(p[:n])
	}
	if err != nil {
		t.end(err)
	}
	return n, err
}

func (t *teeBody) Close() error {
	t.end(errMirrorCut)
	return t.src.Close()
}

// end ends every mirror body: io.EOF ends them cleanly, another error aborts them.
func (t *teeBody) end(err error) {
	for _, m := range t.mirrors {
		m.finish(err)
	}
}

// mirrorBody is one mirror's copy of the request body: what the primary read and
// the mirror has not yet, at most maxMirrorLag bytes.
type mirrorBody struct {
	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte
	err    error // set once the body ends: io.EOF or why it was cut
	closed bool  // the mirror's transport is done with it
}

func (m *mirrorBody) write(p []byte) {
	if len(p) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil || m.closed {
		return
	}
	if len(m.buf)+len(p) > maxMirrorLag {
		m.err, m.buf = errMirrorBehind, nil
	} else {
		m.buf = append(m.buf, p...)
	}
	m.cond.Broadcast()
}

func (m *mirrorBody) finish(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		m.err = err
	}
	m.cond.Broadcast()
}

func (m *mirrorBody) Read(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.buf) == 0 && m.err == nil && !m.closed {
		m.cond.Wait()
	}
	if len(m.buf) > 0 {
		n := copy(p, m.buf)
		m.buf = m.buf[n:]
		return n, nil
	}
	if m.closed {
		return 0, io.ErrClosedPipe
	}
	return 0, m.err
}

func (m *mirrorBody) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed, m.buf = true, nil
	m.cond.Broadcast()
	return nil
}
