package hbone

import (
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// readSizes records how much room each socket read of the record layer offered.
type readSizes struct {
	io.ReadWriter
	offered []int
}

func (r *readSizes) Read(p []byte) (int, error) {
	r.offered = append(r.offered, len(p))
	return r.ReadWriter.Read(p)
}

// unread is how many bytes wait in c's receive queue.
func unread(tb testing.TB, c net.Conn) int {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		tb.Fatal(err)
	}
	if ierr != nil {
		tb.Fatal(ierr)
	}
	return n
}

// A bulk flow whose bursts do not fill the read-ahead buffer (a TSO segment is 64 KiB;
// the buffer is twice that) keeps the buffer between bursts: each burst is one read.
// Given back whenever a burst was drained, every burst took two reads, the first of
// them one record into the small buffer.
func TestRecordsReadAheadKeptBetweenBursts(t *testing.T) {
	rl, peer := recordPair(t, true)
	spy := &readSizes{ReadWriter: rl.sock}
	rl.sock = spy
	const burst = 4 * maxPlaintext // four full records
	const wire = 4 * (recordHeaderLen + maxPlaintext + 1 + aeadTagLen)
	out, in := make([]byte, burst), make([]byte, burst)
	for i := range 8 {
		if _, err := peer.Write(out); err != nil {
			t.Fatal(err)
		}
		// The whole burst waits in the socket before the record layer reads, as it
		// does on a busy receiver, so what one read takes does not depend on timing.
		eventually(t, "burst queued", func() bool { return unread(t, rl.nc) >= wire })
		before := len(spy.offered)
		if _, err := io.ReadFull(rl, in); err != nil {
			t.Fatal(err)
		}
		reads := spy.offered[before:]
		if i >= 1 && (len(reads) != 1 || reads[0] != recordReadAhead) {
			t.Fatalf("burst %d: reads offered %v bytes, want one read into the %d-byte read-ahead buffer", i+1, reads, recordReadAhead)
		}
	}
	// A quiet connection gives the buffer back: a small read after the drain.
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ping queued", func() bool { return unread(t, rl.nc) > 0 })
	if _, err := io.ReadFull(rl, in[:4]); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pong queued", func() bool { return unread(t, rl.nc) > 0 })
	if _, err := io.ReadFull(rl, in[:4]); err != nil {
		t.Fatal(err)
	}
	if last := spy.offered[len(spy.offered)-1]; last != len(rl.small) || rl.big != nil {
		t.Fatalf("after small reads the last read offered %d bytes (read-ahead held: %v), want the %d-byte small buffer", last, rl.big != nil, len(rl.small))
	}
}
