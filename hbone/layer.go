package hbone

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
)

// RecordLayer picks what carries an HBONE connection's TLS records once crypto/tls has
// done the handshake. Both speak standard TLS 1.3 records, so peers interoperate
// whatever each side picks.
type RecordLayer uint8

const (
	// RecordsOwn is hbone's own record layer (record.go), keyed from the handshake's
	// traffic secrets: a batch of frames is sealed in one buffer and sent with one
	// write, received records are opened straight into the stream buffers. The default.
	RecordsOwn RecordLayer = iota
	// RecordsCryptoTLS keeps crypto/tls's tls.Conn for the whole connection, behind a
	// buffer that makes a batch of frames one tls Write: the fallback, and the
	// reference to compare the own layer against.
	RecordsCryptoTLS
)

// String returns "own" or "crypto-tls", as ParseRecordLayer reads them.
func (r RecordLayer) String() string {
	switch r {
	case RecordsOwn:
		return "own"
	case RecordsCryptoTLS:
		return "crypto-tls"
	}
	return fmt.Sprintf("RecordLayer(%d)", uint8(r))
}

// ParseRecordLayer reads a record layer's name: "own" or "crypto-tls".
func ParseRecordLayer(s string) (RecordLayer, error) {
	for _, r := range []RecordLayer{RecordsOwn, RecordsCryptoTLS} {
		if s == r.String() {
			return r, nil
		}
	}
	return 0, fmt.Errorf("unknown record layer %q (want %q or %q)", s, RecordsOwn, RecordsCryptoTLS)
}

func (r RecordLayer) check() error {
	if r > RecordsCryptoTLS {
		return fmt.Errorf("unknown record layer %d (want RecordsOwn or RecordsCryptoTLS)", uint8(r))
	}
	return nil
}

// recordLayer is what a connection needs of the TLS records under it. The connection's
// read loop is its only reader and the connection's writing role (see conn.drain) its
// only writer.
type recordLayer interface {
	// Read returns received application data.
	Read(p []byte) (int, error)
	// Write queues p; nothing need reach the socket before Flush.
	Write(p []byte) (int, error)
	// Flush sends everything written.
	Flush() error
	// CloseNotify sends close_notify after everything written.
	CloseNotify() error
	// writeSlots sends, after everything written, the n payload bytes laid out in
	// buf's record slots (see slotData), each slot's DATA frame header in place.
	writeSlots(buf []byte, n int) error
	// netConn is the socket under the records, for addresses, deadlines and Close.
	netConn() net.Conn
	// hook installs the connection's callbacks before it starts: pending asks its
	// writer to flush soon, beforeRead runs in the reader before each socket read
	// (which may wait).
	hook(pending, beforeRead func())
}

// handshake runs crypto/tls's handshake on nc and returns the connection's record layer
// and TLS state; on error nc is closed. A server's cfg comes from hboneTLS.
func handshake(ctx context.Context, nc net.Conn, cfg *tls.Config, client bool, layer RecordLayer) (recordLayer, tls.ConnectionState, error) {
	if layer == RecordsCryptoTLS {
		return handshakeCryptoTLS(ctx, nc, cfg, client)
	}
	rl, st, err := handshakeOwn(ctx, nc, cfg, client)
	if err != nil {
		return nil, st, err // not a nil *records in a non-nil interface
	}
	return rl, st, nil
}

// tlsHandshake runs the handshake of tc and checks what it negotiated.
func tlsHandshake(ctx context.Context, tc *tls.Conn) (tls.ConnectionState, error) {
	if err := tc.HandshakeContext(ctx); err != nil {
		return tc.ConnectionState(), fmt.Errorf("tls handshake: %w", err)
	}
	st := tc.ConnectionState()
	return st, checkNegotiated(st)
}

func handshakeCryptoTLS(ctx context.Context, nc net.Conn, cfg *tls.Config, client bool) (recordLayer, tls.ConnectionState, error) {
	sock := &hookConn{Conn: nc}
	var tc *tls.Conn
	if client {
		tc = tls.Client(sock, cfg)
	} else {
		tc = tls.Server(sock, cfg)
	}
	st, err := tlsHandshake(ctx, tc)
	if err != nil {
		nc.Close()
		return nil, st, err
	}
	return &tlsRecords{tc: tc, sock: sock}, st, nil
}

// hookConn is the socket under a tls.Conn; before, once set, runs ahead of each read
// from it, where the reader may wait.
type hookConn struct {
	net.Conn
	before func()
}

func (h *hookConn) Read(p []byte) (int, error) {
	if h.before != nil {
		h.before()
	}
	return h.Conn.Read(p)
}

// tlsRecords is the crypto/tls record layer. crypto/tls seals each Write into records
// of its own and answers the peer's KeyUpdates itself.
type tlsRecords struct {
	tc   *tls.Conn
	sock *hookConn
	out  *[]byte // written, not yet given to tc; from outPool, nil when flushed
	werr error
}

func (t *tlsRecords) Read(p []byte) (int, error) { return t.tc.Read(p) }

// Write collects p for Flush; a batch that outgrows the buffer goes out in
// buffer-sized tls Writes.
func (t *tlsRecords) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if t.werr != nil {
			return n, t.werr
		}
		if t.out == nil {
			t.out = outPool.Get().(*[]byte)
		}
		b := *t.out
		k := copy(b[len(b):cap(b)], p)
		*t.out = b[:len(b)+k]
		p, n = p[k:], n+k
		if len(*t.out) == cap(*t.out) {
			t.send()
		}
	}
	return n, nil
}

// send gives what is collected to tc and releases the buffer.
func (t *tlsRecords) send() error {
	if t.out == nil {
		return t.werr
	}
	if len(*t.out) > 0 && t.werr == nil {
		if _, err := t.tc.Write(*t.out); err != nil {
			t.werr = err
		}
	}
	putOut(t.out)
	t.out = nil
	return t.werr
}

func (t *tlsRecords) Flush() error { return t.send() }

func (t *tlsRecords) CloseNotify() error {
	if err := t.send(); err != nil {
		return err
	}
	return t.tc.CloseWrite()
}

// writeSlots writes each slot's frame, header and payload, through tc like any other
// frame: crypto/tls lays out records of its own.
func (t *tlsRecords) writeSlots(buf []byte, n int) error {
	for i := 0; n > 0; i++ {
		p := min(n, slotPayload)
		n -= p
		off := i*slotLen + recordHeaderLen
		if _, err := t.Write(buf[off : off+frameHeaderLen+p]); err != nil {
			return err
		}
	}
	return nil
}

func (t *tlsRecords) netConn() net.Conn { return t.sock.Conn }

// hook: a KeyUpdate is answered by crypto/tls, so nothing is ever pending.
func (t *tlsRecords) hook(_, beforeRead func()) { t.sock.before = beforeRead }
