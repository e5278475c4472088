package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"
)

// testDataPath is the data path of newHarness's waypoint ("": the default).
var testDataPath string

// TestStdPath runs the HTTP tests on the std path (the others run them on the default
// path, fast).
func TestStdPath(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"HTTPThroughWaypoint", TestHTTPThroughWaypoint},
		{"TCPThroughWaypoint", TestTCPThroughWaypoint},
		{"NotBoundRefused", TestNotBoundRefused},
		{"L7Policy", TestL7Policy},
		{"HTTPRoutes", TestHTTPRoutes},
		{"MalformedHTTP", TestMalformedHTTP},
		{"Bodies", testFastPathBodies},
		{"OutlierEjection", TestOutlierEjection},
		{"RetryOtherEndpoint", TestRetryOtherEndpoint},
		{"CircuitBreakerOverflow", TestCircuitBreakerOverflow},
		{"ConsistentHashCookie", TestConsistentHashCookie},
		{"ConnectFailureRetried", TestConnectFailureRetried},
		{"MaxRequestsPerConnection", TestMaxRequestsPerConnection},
		{"LocalityFollowsTheWaypoint", TestLocalityFollowsTheWaypoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testDataPath = DataPathStd
			t.Cleanup(func() { testDataPath = "" })
			tc.fn(t)
		})
	}
}

func BenchmarkHTTPKeepAliveStd(b *testing.B) {
	testDataPath = DataPathStd
	b.Cleanup(func() { testDataPath = "" })
	BenchmarkHTTPKeepAlive(b)
}

// FuzzParseRequestHead: the fast path's parser never panics, and a head it accepts is
// one net/http accepts too, with the same method, target, Host and Content-Length.
func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: echo.apps\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
		"\r\nGET /p HTTP/1.1\nHost: h\n\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 1024)
		b, err := readHead(br, nil, 4096)
		if err != nil {
			return
		}
		h, err := parseRequestHead(b)
		if err != nil {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("fast path accepted %q, net/http refused it: %v", b, err)
		}
		if r.Method != h.method || r.RequestURI != h.target || r.Host != h.host {
			t.Fatalf("%q: fast path %s %s host %q, net/http %s %s host %q", b, h.method, h.target, h.host, r.Method, r.RequestURI, r.Host)
		}
		if h.contentLength >= 0 && r.ContentLength != h.contentLength {
			t.Fatalf("%q: Content-Length %d, net/http %d", b, h.contentLength, r.ContentLength)
		}
	})
}

// testFastPathBodies: bodies both ways over one keep-alive stream, whatever path serves
// them: a POST echoed, a chunked response with a trailer, HEAD, a chunked request (the
// fast path hands the stream to the std path, which serves it and what follows), and
// Connection: close.
func testFastPathBodies(t *testing.T) {
	h := newHarness(t)
	c, err := h.connect(t, "198.19.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i, tc := range []struct {
		req, wantBody string
		trailer       string
		head          bool
	}{
		{req: "POST /echo HTTP/1.1\r\nHost: echo.apps\r\nContent-Length: 11\r\n\r\nhello there", wantBody: "hello there"},
		{req: "GET /chunked HTTP/1.1\r\nHost: echo.apps\r\n\r\n", wantBody: "hello world", trailer: "11"},
		{req: "HEAD /p HTTP/1.1\r\nHost: echo.apps\r\n\r\n", head: true},
		{req: "POST /echo HTTP/1.1\r\nHost: echo.apps\r\n\r\n", wantBody: ""},
		{req: "POST /echo HTTP/1.1\r\nHost: echo.apps\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", wantBody: "abc"},
		{req: "POST /echo HTTP/1.1\r\nHost: echo.apps\r\nContent-Length: 2\r\n\r\nok", wantBody: "ok"},
		{req: "GET /chunked HTTP/1.1\r\nHost: echo.apps\r\n\r\n", wantBody: "hello world", trailer: "11"},
	} {
		if _, err := io.WriteString(c, tc.req); err != nil {
			t.Fatal(err)
		}
		method := "GET"
		if tc.head {
			method = "HEAD"
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, err)
		}
		if !tc.head && string(body) != tc.wantBody {
			t.Errorf("request %d: body %q, want %q", i, body, tc.wantBody)
		}
		if tc.trailer != "" && resp.Trailer.Get("X-Sum") != tc.trailer {
			t.Errorf("request %d: trailer X-Sum %q, want %q", i, resp.Trailer.Get("X-Sum"), tc.trailer)
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("request %d: no Date header", i)
		}
	}
	// Connection: close is answered, then the stream ends.
	io.WriteString(c, "GET /last HTTP/1.1\r\nHost: echo.apps\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !resp.Close {
		t.Errorf("Connection: close not answered with close")
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("stream not ended after Connection: close: %v", err)
	}
}

func TestBodies(t *testing.T) { testFastPathBodies(t) }
