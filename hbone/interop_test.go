package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"

	"golang.org/x/net/http2"
)

// Wire compatibility with golang.org/x/net/http2, an HTTP/2 implementation
// that is not ours, in both directions over TLS 1.3 + ALPN h2.

// (a) an x/net http2.Transport CONNECT client talks to our Server.
func TestInteropXNetClientToOurServer(t *testing.T) { onLayers(t, testInteropXNetClientToOurServer) }

func testInteropXNetClientToOurServer(t *testing.T) {
	reqs := make(chan *ConnectRequest, 1)
	h := HandlerFunc(func(s *Stream) {
		reqs <- s.Request()
		if err := s.Accept(); err != nil {
			return
		}
		io.Copy(s, s)
		s.CloseWrite()
	})
	_, addr := startServer(t, h, nil)
	tr := &http2.Transport{TLSClientConfig: theCA(t).clientTLS(t, idClient, idServer)}
	defer tr.CloseIdleConnections()

	pr, pw := io.Pipe()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Scheme: "https", Host: addr},
		Host:   testAuthority,
		Header: http.Header{"Baggage": {"x=1"}},
		Body:   pr,
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := <-reqs
	if r.Authority != testAuthority || r.Peer != idClient || r.Header.Get("Baggage") != "x=1" {
		t.Fatalf("request %+v", r)
	}
	for _, msg := range []string{"hello", "over", "x/net"} {
		if _, err := pw.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q %v", msg, buf, err)
		}
	}
	pw.Close() // END_STREAM from the x/net client
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q %v", rest, err)
	}
}

// (b) our Pool talks to an x/net http2.Server that answers CONNECT with 200
// and echoes the body, flushing after each write.
func TestInteropOurPoolToXNetServer(t *testing.T) { onLayers(t, testInteropOurPoolToXNetServer) }

func testInteropOurPoolToXNetServer(t *testing.T) {
	l, err := net.Listen("tcp", testAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	scfg := theCA(t).serverTLS(t, idServer)
	h2s := &http2.Server{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Host != testAuthority || r.Header.Get("Traceparent") == "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				if _, err := w.Write(buf[:n]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := tls.Server(nc, scfg)
				if err := tc.Handshake(); err != nil {
					nc.Close()
					return
				}
				h2s.ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
			}()
		}
	}()
	defer func() {
		l.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()

	p := newTestPool(t, nil)
	for i := 0; i < 4; i++ { // several streams on one pooled connection
		payload := make([]byte, 1<<20+i) // bigger than x/net's default windows
		for j := range payload {
			payload[j] = byte(j * 7)
		}
		var c *Conn
		var err error
		rest := payload
		if i%2 == 1 {
			// Data before x/net's 200, the first of it in the request's write.
			c, err = p.DialEarly(context.Background(), testReq(l.Addr().String()), payload[:1000])
			rest = payload[1000:]
		} else {
			c, err = p.Dial(context.Background(), testReq(l.Addr().String()))
		}
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		var src *net.TCPConn
		if i >= 2 {
			// From a socket: records sealed in place, more than x/net's windows take
			// at once (the rest goes as ordinary writes).
			src = tcpSource(t, rest)
		}
		go func() {
			var err error
			if src != nil {
				_, err = c.ReadFrom(src)
			} else {
				_, err = c.Write(rest)
			}
			if err == nil {
				err = c.CloseWrite()
			}
			errc <- err
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if string(got) != string(payload) {
			t.Fatalf("echo mismatch: got %d bytes, want %d", len(got), len(payload))
		}
		c.Close()
	}
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("stats %+v", st)
	}
	req := testReq(l.Addr().String())
	req.Authority = "198.18.7.7:1"
	if _, err := p.Dial(context.Background(), req); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("x/net 400: %v", err)
	}
	c, err := p.DialEarly(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("x/net 400 after DialEarly: %v", err)
	}
	c.Close()
	p.Close()
}
