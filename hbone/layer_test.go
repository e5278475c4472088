package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
)

func TestParseRecordLayer(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want RecordLayer
		ok   bool
	}{
		{"own", RecordsOwn, true},
		{"crypto-tls", RecordsCryptoTLS, true},
		{"", 0, false},
		{"Own", 0, false},
		{"crypto/tls", 0, false},
		{"cryptotls", 0, false},
		{"RecordLayer(2)", 0, false},
	} {
		got, err := ParseRecordLayer(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseRecordLayer(%q) = %v, %v", tt.in, got, err)
		}
		if tt.ok && got.String() != tt.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.in)
		}
	}
	if s := RecordLayer(7).String(); s != "RecordLayer(7)" {
		t.Errorf("RecordLayer(7).String() = %q", s)
	}
}

// isLayer reports whether rl is the implementation of l.
func isLayer(rl recordLayer, l RecordLayer) bool {
	switch rl.(type) {
	case *records:
		return l == RecordsOwn
	case *tlsRecords:
		return l == RecordsCryptoTLS
	}
	return false
}

// Each record layer talks to the other: the same TLS 1.3 records on the wire. Data
// goes both ways, through ordinary writes and sealed-in-place slots (ReadFrom a
// socket), several streams share a connection, and a graceful shutdown ends it.
func TestRecordLayersInterop(t *testing.T) {
	payload := make([]byte, 3<<20+11)
	rand.Read(payload)
	for _, cl := range testLayers {
		for _, sl := range testLayers {
			t.Run(cl.String()+"-to-"+sl.String(), func(t *testing.T) {
				serverLayer := make(chan bool, 4)
				srv, addr := startServer(t, HandlerFunc(func(s *Stream) {
					serverLayer <- isLayer(s.c.rl, sl)
					echoHandler(s)
				}), func(c *ServerConfig) { c.Records = sl })
				p := newTestPool(t, func(c *ClientConfig) { c.Records = cl })
				for i := range 3 {
					c, err := p.Dial(context.Background(), testReq(addr))
					if err != nil {
						t.Fatal(err)
					}
					if !isLayer(c.c.rl, cl) {
						t.Fatalf("client connection on %T, want %v", c.c.rl, cl)
					}
					if !<-serverLayer {
						t.Fatalf("server connection not on %v", sl)
					}
					var errc <-chan error
					if i == 1 {
						errc = readFromEcho(c, tcpSource(t, payload), len(payload))
					} else {
						errc = readFromEcho(c, bytes.NewReader(payload), len(payload))
					}
					expectEcho(t, c, payload, errc)
					c.Close()
				}
				if st := p.Stats(); st.Conns != 1 {
					t.Fatalf("stats %+v, want the streams on one connection", st)
				}
				// Shutdown: GOAWAY and close_notify reach the client, whose connection
				// then ends.
				c, err := p.Dial(context.Background(), testReq(addr))
				if err != nil {
					t.Fatal(err)
				}
				<-serverLayer
				done := make(chan error, 1)
				go func() { done <- srv.Shutdown(context.Background()) }()
				if _, err := c.Write([]byte("last")); err != nil {
					t.Fatal(err)
				}
				c.CloseWrite()
				if b, err := io.ReadAll(c); err != nil || string(b) != "last" {
					t.Fatalf("echo during shutdown: %q, %v", b, err)
				}
				c.Close()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				eventually(t, "client connection closed", func() bool { return p.Stats().Conns == 0 })
			})
		}
	}
}

// The fixtures follow the layer of the enclosing onLayers subtest.
func TestLayerOf(t *testing.T) {
	if l := layerOf(t); l != RecordsOwn {
		t.Fatalf("outside onLayers: %v", l)
	}
	onLayers(t, func(t *testing.T) {
		want, _ := ParseRecordLayer(t.Name()[len("TestLayerOf/"):])
		t.Run("nested", func(t *testing.T) {
			if l := layerOf(t); l != want {
				t.Fatalf("%s runs on %v, want %v", t.Name(), l, want)
			}
			c, _ := dialEcho(t, echoHandler)
			if !isLayer(c.c.rl, want) {
				t.Fatalf("connection on %T, want %v", c.c.rl, want)
			}
		})
	})
}
