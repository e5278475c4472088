package sockio_test

import (
	"io"
	"syscall"
	"testing"

	"github.com/ambitmesh/ambit/internal/relay/relaytest"
)

// Readv fills the buffers in order and reports the end of the stream as io.EOF.
func TestRawReadv(t *testing.T) {
	a, b := relaytest.TCPPair(t)
	b.Write([]byte("abcdefgh"))
	b.CloseWrite()
	r := rawOf(t, a)
	x, y := make([]byte, 3), make([]byte, 8)
	iov := make([]syscall.Iovec, 2)
	iov[0].Base, iov[1].Base = &x[0], &y[0]
	iov[0].SetLen(len(x))
	iov[1].SetLen(len(y))
	got := ""
	for {
		n, err := r.Readv(iov)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got += string(x[:min(n, 3)]) + string(y[:max(n-3, 0)])
	}
	if got != "abcdefgh" {
		t.Fatalf("Readv read %q, want abcdefgh", got)
	}
}
