package waypoint

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkHTTPKeepAlive pushes HTTP/1.1 POSTs of 1 KiB through the waypoint over one
// keep-alive stream, real HBONE (mTLS, HTTP/2 CONNECT) on loopback both ways, as the L7
// bench does (`go test ./waypoint -run '^$' -bench HTTPKeepAlive -cpuprofile cpu.out`).
// The backend echoes the body. BenchmarkHTTPKeepAliveStd is the same on the std path.
func BenchmarkHTTPKeepAlive(b *testing.B) {
	h := newHarness(b)
	c, err := h.connect(b, "198.19.0.1:80")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := strings.Repeat("x", 1024)
	req := fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: echo.apps\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	br := bufio.NewReader(c)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
