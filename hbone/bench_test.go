package hbone

import (
	"context"
	"io"
	"testing"
)

// BenchmarkThroughput: one stream, client -> server, bytes/s via SetBytes.
func BenchmarkThroughput(b *testing.B) { onLayers(b, benchmarkThroughput) }

func benchmarkThroughput(b *testing.B) {
	done := make(chan int64, 1)
	h := HandlerFunc(func(s *Stream) {
		s.Accept()
		n, _ := io.Copy(io.Discard, s)
		done <- n
		s.Write([]byte{1})
		s.CloseWrite()
	})
	_, addr := startServer(b, h, nil)
	p := newTestPool(b, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if n := <-done; n != int64(b.N)*int64(len(buf)) {
		b.Fatalf("server read %d bytes", n)
	}
	io.ReadAll(c)
}

// BenchmarkDialPooled: open a CONNECT stream on a warm pooled connection,
// exchange one byte, close.
func BenchmarkDialPooled(b *testing.B) {
	onLayers(b, func(b *testing.B) {
		benchmarkDialPooled(b, func(p *Pool, req Request) (*Conn, error) {
			return p.Dial(context.Background(), req)
		})
	})
}

// BenchmarkDialEarlyPooled: as BenchmarkDialPooled with DialEarly.
func BenchmarkDialEarlyPooled(b *testing.B) {
	onLayers(b, func(b *testing.B) {
		benchmarkDialPooled(b, func(p *Pool, req Request) (*Conn, error) {
			return p.DialEarly(context.Background(), req, nil)
		})
	})
}

func benchmarkDialPooled(b *testing.B, dial func(*Pool, Request) (*Conn, error)) {
	_, addr := startServer(b, echoHandler, nil)
	p := newTestPool(b, nil)
	req := testReq(addr)
	one := []byte{1}
	warm, err := dial(p, req)
	if err != nil {
		b.Fatal(err)
	}
	defer warm.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := dial(p, req)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(one)
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
