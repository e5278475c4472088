package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestStatusCodes(t *testing.T) { onLayers(t, testStatusCodes) }

func testStatusCodes(t *testing.T) {
	var calls atomic.Int32
	h := HandlerFunc(func(s *Stream) {
		calls.Add(1)
		switch s.Request().Target.Port() {
		case 200:
			s.Accept()
		case 400:
			s.Reject(StatusFor(ErrBadRequest), "bad")
		case 401:
			s.Reject(StatusFor(ErrDenied), "policy")
		case 503:
			// returns without answering: the server sends 503
		case 504:
			s.Reject(StatusFor(errors.New("dial refused")), "upstream")
		}
	})
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	tests := []struct {
		authority string
		code      int
		sentinel  error
		handled   bool
	}{
		{"198.18.0.9:200", 200, nil, true},
		{"198.18.0.9:400", 400, ErrBadRequest, true},
		{"198.18.0.9:401", 401, ErrDenied, true},
		{"198.18.0.9:503", 503, ErrUpstream, true},
		{"198.18.0.9:504", 503, ErrUpstream, true},
		{"not-an-ip:80", 400, ErrBadRequest, false},
		{"198.18.0.9", 400, ErrBadRequest, false},
		{"[::1]:0", 400, ErrBadRequest, false},
		{"198.18.0.9:08080", 400, ErrBadRequest, false},
		{"198.18.0.9:0200", 400, ErrBadRequest, false},
		{"198.18.0.9:65536", 400, ErrBadRequest, false},
	}
	for _, tt := range tests {
		t.Run(tt.authority, func(t *testing.T) {
			before := calls.Load()
			req := testReq(addr)
			req.Authority = tt.authority
			c, err := p.Dial(context.Background(), req)
			if tt.code == 200 {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tt.code {
				t.Fatalf("err = %v, want status %d", err, tt.code)
			}
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tt.sentinel)
			}
			if want := "hbone: status " + http.StatusText(tt.code); !strings.Contains(err.Error(), "hbone: status ") {
				t.Fatalf("message %q, want like %q", err, want)
			}
			if got := calls.Load() - before; (got == 1) != tt.handled {
				t.Fatalf("handler calls = %d, handled = %v", got, tt.handled)
			}
		})
	}
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("rejections must not cost the connection: %+v", st)
	}
}

func TestParseAuthority(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // the target, or what the error says
		ok   bool
	}{
		{"198.18.0.1:8080", "198.18.0.1:8080", true},
		{"198.18.0.1:1", "198.18.0.1:1", true},
		{"198.18.0.1:65535", "198.18.0.1:65535", true},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", true},
		{"198.18.0.1:08080", "leading zeros", false},
		{"198.18.0.1:0080", "leading zeros", false},
		{"198.18.0.1:00", "leading zeros", false},
		{"[2001:db8::1]:0443", "leading zeros", false},
		{"198.18.0.1:0", "port is 0", false},
		{"198.18.0.1:65536", "not ip:port", false},
		{"198.18.0.1:99999", "not ip:port", false},
		{"198.18.0.1:+80", "not ip:port", false},
		{"198.18.0.1:-80", "not ip:port", false},
		{"198.18.0.1: 80", "not ip:port", false},
		{"198.18.0.1:8_0", "not ip:port", false},
		{"198.18.0.1:", "not ip:port", false},
		{"198.18.0.1", "not ip:port", false},
		{"198.018.0.1:80", "not ip:port", false},
		{"example.com:80", "not ip:port", false},
		{"2001:db8::1:443", "not ip:port", false},
		{"[fe80::1%eth0]:80", "ipv6 zone", false},
		{"[::ffff:198.18.0.1]:80", "ipv4-mapped", false},
		{"", "not ip:port", false},
	} {
		ap, err := parseAuthority(tt.in)
		switch {
		case tt.ok && (err != nil || ap.String() != tt.want):
			t.Errorf("parseAuthority(%q) = %v, %v; want %s", tt.in, ap, err, tt.want)
		case !tt.ok && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("parseAuthority(%q) = %v, %v; want an error saying %q", tt.in, ap, err, tt.want)
		}
	}
}

func TestStatusFor(t *testing.T) {
	for err, want := range map[error]int{
		ErrBadRequest:                      400,
		ErrDenied:                          401,
		ErrUpstream:                        503,
		errors.New("x"):                    503,
		&StatusError{Code: 401}:            401,
		errors.Join(ErrDenied, io.EOF):     401,
		errors.Join(io.EOF, ErrBadRequest): 400,
	} {
		if got := StatusFor(err); got != want {
			t.Errorf("StatusFor(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestRequestHeadersReachHandler(t *testing.T) { onLayers(t, testRequestHeadersReachHandler) }

func testRequestHeadersReachHandler(t *testing.T) {
	reqs := make(chan *ConnectRequest, 2)
	h := HandlerFunc(func(s *Stream) {
		reqs <- s.Request()
		s.Accept()
	})
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	req := testReq(addr)
	req.Forwarded = netip.MustParseAddrPort("198.18.5.6:43210")
	req.Host = "echo.ns.svc.cluster.local"
	req.Traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	req.Baggage = "k=v"
	c, err := p.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := <-reqs
	if r.Authority != testAuthority || r.Target != netip.MustParseAddrPort(testAuthority) {
		t.Errorf("authority %q target %v", r.Authority, r.Target)
	}
	if r.Forwarded != req.Forwarded || r.ForwardedHost != req.Host {
		t.Errorf("forwarded %v host %q (header %q)", r.Forwarded, r.ForwardedHost, r.Header.Get("Forwarded"))
	}
	if r.Header.Get("Traceparent") != req.Traceparent || r.Header.Get("Baggage") != "k=v" {
		t.Errorf("headers %v", r.Header)
	}
	if r.Peer != idClient || len(r.PeerCertificates) == 0 {
		t.Errorf("peer %v", r.Peer)
	}
	if r.LocalAddr == nil || r.RemoteAddr == nil {
		t.Error("missing addresses")
	}

	// Defaults: no Forwarded, a generated traceparent.
	c, err = p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	r = <-reqs
	if r.Forwarded.IsValid() || r.Header.Get("Forwarded") != "" {
		t.Errorf("unexpected forwarded %v", r.Header)
	}
	if tp := r.Header.Get("Traceparent"); !regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`).MatchString(tp) {
		t.Errorf("generated traceparent %q", tp)
	}
}

func TestParseForwarded(t *testing.T) {
	tests := []struct {
		in   string
		addr string
		host string
	}{
		{`for="1.2.3.4:5"`, "1.2.3.4:5", ""},
		{`for="[2001:db8::1]:443";host="a.b"`, "[2001:db8::1]:443", "a.b"},
		{`For=1.2.3.4:5; Host=x, for="9.9.9.9:9"`, "1.2.3.4:5", "x"},
		{`for=unknown`, "", ""},
		{`garbage`, "", ""},
	}
	for _, tt := range tests {
		ap, host := parseForwarded(tt.in)
		got := ""
		if ap.IsValid() {
			got = ap.String()
		}
		if got != tt.addr || host != tt.host {
			t.Errorf("parseForwarded(%q) = %q %q", tt.in, got, host)
		}
	}
}

// rawClient speaks HTTP/2 by hand over TLS to exercise the server's error
// handling with frames our Pool would never send.
type rawClient struct {
	tc   *tls.Conn
	fr   *http2.Framer // read side
	wfr  *http2.Framer // write side
	ack  *http2.Framer // SETTINGS acks from awaitStatus (may run beside a writer)
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	cfg := theCA(t).clientTLS(t, idClient, idServer)
	tc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &rawClient{tc: tc, fr: http2.NewFramer(nil, tc), wfr: http2.NewFramer(tc, nil), ack: http2.NewFramer(tc, nil)}
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.henc = hpack.NewEncoder(&rc.hbuf)
	return rc
}

func (rc *rawClient) start(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(rc.tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := rc.wfr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
}

// settle reads until the server's SETTINGS and acknowledges it, so that no ACK of
// awaitStatus's can fall between the frames of a header block written beside it (a
// CONNECT's HEADERS and CONTINUATIONs must be contiguous).
func (rc *rawClient) settle(t *testing.T) {
	t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatalf("read the server's SETTINGS: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			if err := rc.ack.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

func (rc *rawClient) headers(t *testing.T, id uint32, fields ...string) {
	t.Helper()
	if err := rc.writeHeaders(id, fields...); err != nil {
		t.Fatal(err)
	}
}

func (rc *rawClient) writeHeaders(id uint32, fields ...string) error {
	return rc.writeBlock(id, rc.encode(fields...), 16384, 16384)
}

// encode returns the HPACK block of name, value pairs.
func (rc *rawClient) encode(fields ...string) []byte {
	rc.hbuf.Reset()
	for i := 0; i < len(fields); i += 2 {
		rc.henc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(rc.hbuf.Bytes())
}

// writeBlock writes a header block: first bytes of it in HEADERS, the rest in
// CONTINUATIONs of rest bytes.
func (rc *rawClient) writeBlock(id uint32, block []byte, first, rest int) error {
	n := min(len(block), first)
	if err := rc.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndHeaders: n == len(block)}); err != nil {
		return err
	}
	for block = block[n:]; len(block) > 0; block = block[n:] {
		n = min(len(block), rest)
		if err := rc.wfr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
			return err
		}
	}
	return nil
}

// awaitStatus reads frames until a response on stream id, a GOAWAY or EOF.
func (rc *rawClient) awaitStatus(t *testing.T, id uint32) (status string, goAway *http2.GoAwayFrame) {
	t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return "", nil
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f.PseudoValue("status"), nil
			}
		case *http2.GoAwayFrame:
			return "", f
		case *http2.SettingsFrame:
			if !f.IsAck() {
				rc.ack.WriteSettingsAck()
			}
		}
	}
}

func TestServerRobustness(t *testing.T) { onLayers(t, testServerRobustness) }

func testServerRobustness(t *testing.T) {
	var calls atomic.Int32
	h := HandlerFunc(func(s *Stream) { calls.Add(1); s.Accept() })
	_, addr := startServer(t, h, nil)

	t.Run("garbage after preface", func(t *testing.T) {
		rc := dialRaw(t, addr)
		io.WriteString(rc.tc, http2.ClientPreface)
		rc.tc.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1000))
		_, ga := rc.awaitStatus(t, 1)
		if ga != nil && ga.ErrCode != http2.ErrCodeProtocol && ga.ErrCode != http2.ErrCodeFrameSize {
			t.Fatalf("goaway code %v", ga.ErrCode)
		}
	})
	t.Run("bad preface", func(t *testing.T) {
		rc := dialRaw(t, addr)
		io.WriteString(rc.tc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := io.ReadAll(rc.tc); err != nil && !errors.Is(err, io.EOF) {
			t.Logf("read: %v", err)
		}
	})
	for _, tc := range []struct {
		name   string
		fields []string
	}{
		{"GET", []string{":method", "GET", ":scheme", "https", ":path", "/", ":authority", testAuthority}},
		{"extended CONNECT", []string{":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/", ":authority", testAuthority}},
		{"CONNECT with path", []string{":method", "CONNECT", ":path", "/", ":authority", testAuthority}},
		{"no authority", []string{":method", "CONNECT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, addr)
			rc.start(t)
			rc.headers(t, 1, tc.fields...)
			if st, ga := rc.awaitStatus(t, 1); st != "400" {
				t.Fatalf("status %q goaway %v, want 400", st, ga)
			}
			// The connection survives: a valid CONNECT on it still works.
			rc.headers(t, 3, ":method", "CONNECT", ":authority", testAuthority)
			if st, ga := rc.awaitStatus(t, 3); st != "200" {
				t.Fatalf("follow-up status %q goaway %v", st, ga)
			}
		})
	}
	t.Run("even stream id", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.start(t)
		rc.headers(t, 2, ":method", "CONNECT", ":authority", testAuthority)
		if _, ga := rc.awaitStatus(t, 2); ga == nil || ga.ErrCode != http2.ErrCodeProtocol {
			t.Fatalf("goaway %v, want PROTOCOL_ERROR", ga)
		}
	})
	t.Run("DATA on idle stream", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.start(t)
		rc.wfr.WriteData(5, false, []byte("x"))
		if _, ga := rc.awaitStatus(t, 5); ga == nil || ga.ErrCode != http2.ErrCodeProtocol {
			t.Fatalf("goaway %v, want PROTOCOL_ERROR", ga)
		}
	})
	t.Run("window overflow", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.start(t)
		rc.wfr.WriteWindowUpdate(0, 1<<31-1)
		if _, ga := rc.awaitStatus(t, 1); ga == nil || ga.ErrCode != http2.ErrCodeFlowControl {
			t.Fatalf("goaway %v, want FLOW_CONTROL_ERROR", ga)
		}
	})
	if n := calls.Load(); n != 4 {
		t.Fatalf("handler called %d times, want only for the 4 valid follow-ups", n)
	}
}

// TestServerHeaderLimits: what docs/hbone.md section 5 promises for header blocks over
// the 64 KiB budget (SETTINGS_MAX_HEADER_LIST_SIZE, sizes as RFC 9113 counts them:
// name, value and 32 bytes a field). A block that went over it but was decoded to its
// end gets 431 and the connection lives on; any more of a block once it is over, a
// fragment over twice the budget left, or a name or value longer than the budget (the
// HPACK string limit) ends the connection.
func TestServerHeaderLimits(t *testing.T) { onLayers(t, testServerHeaderLimits) }

func testServerHeaderLimits(t *testing.T) {
	var calls atomic.Int32
	_, addr := startServer(t, HandlerFunc(func(s *Stream) { calls.Add(1); s.Accept() }), nil)
	connect := []string{":method", "CONNECT", ":authority", testAuthority}
	// :method and :authority count 46 and 57, a field "x-fill" 38 and its value.
	listOf := func(size int) []string { return append(connect, "x-fill", strings.Repeat("a", size-46-57-38)) }
	withValue := func(n int) []string { return append(connect, "x-fill", strings.Repeat("a", n)) }
	var overThenMore []string // over the budget at x-b, then two more CONTINUATIONs' worth
	overThenMore = append(overThenMore, connect...)
	overThenMore = append(overThenMore, "x-a", strings.Repeat("a", 40000), "x-b", strings.Repeat("a", 40000))
	for i := range 30 {
		overThenMore = append(overThenMore, fmt.Sprintf("x-c%d", i), strings.Repeat("b", 2000))
	}
	for _, tc := range []struct {
		name   string
		write  func(rc *rawClient) error
		status string        // the answer, and the connection stays usable
		goAway http2.ErrCode // or the connection error
	}{
		{name: "list at the budget", status: "200",
			write: func(rc *rawClient) error { return rc.writeHeaders(1, listOf(maxHeaderList)...) }},
		{name: "list one byte over", status: "431",
			write: func(rc *rawClient) error { return rc.writeHeaders(1, listOf(maxHeaderList+1)...) }},
		{name: "value as long as the budget", status: "431",
			write: func(rc *rawClient) error { return rc.writeHeaders(1, withValue(maxHeaderList)...) }},
		{name: "value one byte longer", goAway: http2.ErrCodeCompression,
			write: func(rc *rawClient) error { return rc.writeHeaders(1, withValue(maxHeaderList+1)...) }},
		{name: "value of 200 KiB", goAway: http2.ErrCodeCompression,
			write: func(rc *rawClient) error { return rc.writeHeaders(1, withValue(200<<10)...) }},
		{name: "more of the block once over", goAway: http2.ErrCodeProtocol,
			write: func(rc *rawClient) error { return rc.writeHeaders(1, overThenMore...) }},
		{name: "fragment over twice the budget left", goAway: http2.ErrCodeProtocol,
			write: func(rc *rawClient) error {
				// 40 KiB of the budget used, then a CONTINUATION of 180 KiB: more than
				// twice the 24 KiB left (x/net adds the 64 KiB of trailers it would take).
				first := rc.encode(append(connect, "x-a", strings.Repeat("a", 40000))...)
				block := append(first, bytes.Repeat([]byte{0x7f}, 180<<10)...)
				return rc.writeBlock(1, block, len(first), len(block))
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := calls.Load()
			rc := dialRaw(t, addr)
			rc.start(t)
			rc.settle(t)
			// The server may hang up before the whole block is written.
			wrote := make(chan error, 1)
			go func() { wrote <- tc.write(rc) }()
			st, ga := rc.awaitStatus(t, 1)
			if tc.goAway != 0 {
				if ga == nil || ga.ErrCode != tc.goAway {
					t.Fatalf("status %q goaway %v, want GOAWAY %v", st, ga, tc.goAway)
				}
				rc.tc.Close()
				<-wrote
				return
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if st != tc.status {
				var code http2.ErrCode
				var debug []byte
				if ga != nil {
					code, debug = ga.ErrCode, ga.DebugData()
				}
				t.Fatalf("status %q goaway %v %v %q, want %s", st, ga, code, debug, tc.status)
			}
			want := int32(0)
			if tc.status == "200" {
				want = 1
			}
			if got := calls.Load() - before; got != want {
				t.Fatalf("handler ran %d times, want %d", got, want)
			}
			// The HPACK state is in step: the next request on the connection works.
			rc.headers(t, 3, connect...)
			if st, ga := rc.awaitStatus(t, 3); st != "200" {
				t.Fatalf("follow-up status %q goaway %v", st, ga)
			}
		})
	}
}

func TestServerRejectsClientWithoutSpiffeID(t *testing.T) {
	onLayers(t, testServerRejectsClientWithoutSpiffeID)
}

func testServerRejectsClientWithoutSpiffeID(t *testing.T) {
	ca := theCA(t)
	// Server that trusts any client certificate, so the check is ours.
	scfg := ca.serverTLS(t, idServer)
	scfg.VerifyPeerCertificate = nil
	var calls atomic.Int32
	_, addr := startServer(t, HandlerFunc(func(s *Stream) { calls.Add(1); s.Accept() }), func(c *ServerConfig) { c.TLSConfig = scfg })
	ccfg := ca.clientTLS(t, idClient, idServer)
	ccfg.Certificates = []tls.Certificate{ca.leafNoURI(t)}
	tc, err := tls.Dial("tcp", addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	rc := &rawClient{tc: tc, fr: http2.NewFramer(nil, tc), wfr: http2.NewFramer(tc, nil), ack: http2.NewFramer(tc, nil)}
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.henc = hpack.NewEncoder(&rc.hbuf)
	rc.start(t)
	rc.headers(t, 1, ":method", "CONNECT", ":authority", testAuthority)
	if st, _ := rc.awaitStatus(t, 1); st != "401" {
		t.Fatalf("status %q, want 401", st)
	}
	if calls.Load() != 0 {
		t.Fatal("handler called for a client without SPIFFE ID")
	}
}

func TestNewConfigErrors(t *testing.T) {
	if _, err := NewPool(ClientConfig{}); err == nil {
		t.Error("NewPool without TLSConfig succeeded")
	}
	if _, err := NewServer(ServerConfig{Handler: echoHandler}); err == nil {
		t.Error("NewServer without TLSConfig succeeded")
	}
	if _, err := NewServer(ServerConfig{TLSConfig: &tls.Config{}}); err == nil {
		t.Error("NewServer without Handler succeeded")
	}
	if _, err := NewPool(ClientConfig{TLSConfig: testClientTLS(t), Records: 2}); err == nil || !strings.Contains(err.Error(), "unknown record layer 2") {
		t.Errorf("NewPool with an unknown record layer: %v", err)
	}
	if _, err := NewServer(ServerConfig{TLSConfig: &tls.Config{}, Handler: echoHandler, Records: 9}); err == nil || !strings.Contains(err.Error(), "unknown record layer 9") {
		t.Errorf("NewServer with an unknown record layer: %v", err)
	}
	p := newTestPool(t, nil)
	if _, err := p.Dial(context.Background(), Request{Authority: "1.2.3.4:5"}); err == nil {
		t.Error("Dial without Addr succeeded")
	}
}
