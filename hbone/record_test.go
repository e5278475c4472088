package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/relay/relaytest"
)

// recordPair connects our record layer (client or server side) to a plain crypto/tls
// peer over TCP. The peer server sends session tickets, which our client must ignore.
func recordPair(tb testing.TB, oursClient bool) (*records, *tls.Conn) {
	tb.Helper()
	cc, sc := relaytest.TCPPair(tb)
	ca := theCA(tb)
	type res struct {
		rl   *records
		peer *tls.Conn
		err  error
	}
	ch := make(chan res, 2)
	ours := func(nc net.Conn, client bool) {
		cfg := hboneTLS(ca.serverTLS(tb, idServer))
		if client {
			cfg = hboneTLS(ca.clientTLS(tb, idClient, idServer))
			// Offer resumption so that the peer server sends tickets.
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			cfg.SessionTicketsDisabled = false
		}
		rl, _, err := handshakeOwn(context.Background(), nc, cfg, client)
		ch <- res{rl: rl, err: err}
	}
	peer := func(nc net.Conn, client bool) {
		var tc *tls.Conn
		if client {
			cfg := ca.clientTLS(tb, idClient, idServer)
			// Offer resumption: were our server's crypto/tls to send a ticket after the
			// handshake, that record would take a sequence number our record layer
			// reuses, and this peer would fail on the first record.
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			tc = tls.Client(nc, cfg)
		} else {
			cfg := ca.serverTLS(tb, idServer)
			cfg.SessionTicketsDisabled = false
			tc = tls.Server(nc, cfg)
		}
		ch <- res{peer: tc, err: tc.Handshake()}
	}
	go func() {
		if oursClient {
			peer(sc, false)
		} else {
			ours(sc, false)
		}
	}()
	if oursClient {
		ours(cc, true)
	} else {
		peer(cc, true)
	}
	var rl *records
	var pc *tls.Conn
	for range 2 {
		r := <-ch
		if r.err != nil {
			tb.Fatal(r.err)
		}
		if r.rl != nil {
			rl = r.rl
		}
		if r.peer != nil {
			pc = r.peer
		}
	}
	tb.Cleanup(func() {
		rl.nc.Close()
		pc.Close()
	})
	rl.nc.SetDeadline(time.Now().Add(30 * time.Second))
	pc.SetDeadline(time.Now().Add(30 * time.Second))
	return rl, pc
}

// writeChunks writes data in pieces of the given sizes (cycled), flushing after each
// flushEvery pieces.
func writeChunks(rl *records, data []byte, sizes []int, flushEvery int) error {
	for i := 0; len(data) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(data))
		if _, err := rl.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
		if (i+1)%flushEvery == 0 {
			if err := rl.Flush(); err != nil {
				return err
			}
		}
	}
	return rl.Flush()
}

// transfer runs send while reading len(want) bytes from r in reads of the given sizes,
// and fails unless both succeed and what was read equals want.
func transfer(tb testing.TB, what string, send func() error, r io.Reader, reads []int, want []byte) {
	tb.Helper()
	werr := make(chan error, 1)
	go func() { werr <- send() }()
	got, err := readChunks(r, len(want), reads)
	if err != nil {
		tb.Fatalf("%s: read after %d bytes: %v", what, len(got), err)
	}
	if err := <-werr; err != nil {
		tb.Fatalf("%s: send: %v", what, err)
	}
	if !bytes.Equal(got, want) {
		tb.Fatalf("%s: received different bytes", what)
	}
}

// readChunks reads n bytes with reads of the given sizes (cycled).
func readChunks(r io.Reader, n int, sizes []int) ([]byte, error) {
	out := make([]byte, 0, n)
	for i := 0; len(out) < n; i++ {
		k := min(sizes[i%len(sizes)], n-len(out))
		m, err := io.ReadFull(r, out[len(out):len(out)+k])
		out = out[:len(out)+m]
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func TestRecordsInteropCryptoTLS(t *testing.T) {
	data := make([]byte, 3<<20+7)
	rand.Read(data)
	for _, tc := range []struct {
		name       string
		oursClient bool
		writes     []int
		flushEvery int
		reads      []int
	}{
		{"client/bulk", true, []int{256 << 10}, 1, []int{256 << 10}},
		{"server/bulk", false, []int{256 << 10}, 1, []int{256 << 10}},
		{"client/frames", true, []int{9, 16384, 9, 100000, 1}, 3, []int{9, 16384, 1, 65536}},
		{"server/tiny", false, []int{1, 9, 777}, 1, []int{1, 9, 16385, 3}},
		{"server/one-batch", false, []int{4096}, 1 << 30, []int{16384}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl, peer := recordPair(t, tc.oursClient)
			transfer(t, "ours -> crypto/tls", func() error { return writeChunks(rl, data, tc.writes, tc.flushEvery) },
				peer, []int{32 << 10}, data)
			transfer(t, "crypto/tls -> ours", func() error { _, err := peer.Write(data); return err },
				rl, tc.reads, data)
			if tc.oursClient && rl.tickets == 0 {
				t.Error("the peer server sent no session ticket to skip")
			}
			// close_notify ends reads cleanly, both ways.
			if err := rl.CloseNotify(); err != nil {
				t.Fatal(err)
			}
			if n, err := peer.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Fatalf("peer after our close_notify: Read = %d, %v; want 0, EOF", n, err)
			}
			peer.Close()
			if n, err := rl.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Fatalf("after close_notify: Read = %d, %v; want 0, EOF", n, err)
			}
		})
	}
}

// TestRecordsKeyUpdate: keys roll over in both directions without losing a byte,
// against crypto/tls as the peer.
func TestRecordsKeyUpdate(t *testing.T) {
	rl, peer := recordPair(t, true)
	// Ours updates every 4 records while sending.
	rl.keyUpdateAfter = 4
	first := rl.wk.secret
	data := make([]byte, 1<<20)
	rand.Read(data)
	transfer(t, "across our key updates", func() error { return writeChunks(rl, data, []int{50000}, 2) },
		peer, []int{64 << 10}, data)
	if bytes.Equal(first, rl.wk.secret) {
		t.Fatal("write key never updated")
	}

	// Ours asks the peer to update too: crypto/tls answers with its own KeyUpdate,
	// which our reader must apply before the data that follows it.
	rl.keyUpdateAfter = keyUpdateAfter
	readFirst := rl.rk.secret
	rl.wmu.Lock()
	rl.keyUpdateLocked(true)
	rl.wmu.Unlock()
	if err := rl.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := rl.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := rl.Flush(); err != nil {
		t.Fatal(err)
	}
	transfer(t, "across the peer's key update", func() error {
		// crypto/tls processes our request when it reads.
		if _, err := peer.Read(make([]byte, 1)); err != nil {
			return err
		}
		_, err := peer.Write(data)
		return err
	}, rl, []int{100 << 10}, data)
	if bytes.Equal(readFirst, rl.rk.secret) {
		t.Fatal("read key never updated: the peer's KeyUpdate was not seen")
	}
}

// pipeConn is a net.Conn whose reads come from a fixed byte stream and whose writes are
// collected.
type pipeConn struct {
	net.Conn
	r io.Reader
	w bytes.Buffer
}

func (p *pipeConn) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error) { return p.w.Write(b) }

// sealedStream returns what a peer sealing the given records (content type, content)
// under secret sends.
func sealedStream(tb testing.TB, secret []byte, recs ...[2][]byte) []byte {
	return sealedStreamSuite(tb, tls.TLS_AES_128_GCM_SHA256, keyUpdateAfter, secret, recs...)
}

func sealedStreamSuite(tb testing.TB, suite uint16, updateAfter uint64, secret []byte, recs ...[2][]byte) []byte {
	tb.Helper()
	pc := &pipeConn{}
	w := &records{nc: pc, sock: pc, open: -1, keyUpdateAfter: updateAfter}
	if err := w.wk.init(suite, secret); err != nil {
		tb.Fatal(err)
	}
	for _, r := range recs {
		w.openRecordLocked()
		*w.out = append(*w.out, r[1]...)
		w.sealLocked(r[0][0])
	}
	if err := w.flushLocked(); err != nil {
		tb.Fatal(err)
	}
	return pc.w.Bytes()
}

func readerOf(tb testing.TB, secret, stream []byte) *records {
	return readerOfSuite(tb, tls.TLS_AES_128_GCM_SHA256, secret, stream)
}

func readerOfSuite(tb testing.TB, suite uint16, secret, stream []byte) *records {
	tb.Helper()
	pc := &pipeConn{r: bytes.NewReader(stream)}
	r := &records{nc: pc, sock: pc, open: -1, keyUpdateAfter: keyUpdateAfter}
	r.small = make([]byte, maxRecord)
	r.in = r.small
	if err := r.rk.init(suite, secret); err != nil {
		tb.Fatal(err)
	}
	if err := r.wk.init(suite, secret); err != nil {
		tb.Fatal(err)
	}
	return r
}

func TestRecordsRejectBadInput(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	app := func(s string) [2][]byte { return [2][]byte{{recordApplication}, []byte(s)} }
	typed := func(typ byte, b ...byte) [2][]byte { return [2][]byte{{typ}, b} }
	good := sealedStream(t, secret, app("hello"))
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 1; return b }
	for _, tc := range []struct {
		name   string
		stream []byte
		wantIs error
		want   string
	}{
		{"tampered ciphertext", flip(good, 7), ErrRecord, "bad record MAC"},
		{"tampered header", flip(good, 4), nil, ""}, // length change: truncated or bad MAC
		{"outer type", append([]byte{22}, good[1:]...), ErrRecord, "outer record type 22"},
		{"legacy version", append([]byte{23, 3, 1}, good[3:]...), ErrRecord, "legacy version"},
		{"oversized", []byte{23, 3, 3, 0x42, 0x01}, ErrRecord, "exceeds"},
		{"too short", []byte{23, 3, 3, 0, 16}, ErrRecord, "too short"},
		{"truncated", good[:len(good)-3], io.ErrUnexpectedEOF, ""},
		{"wrong key", sealedStream(t, bytes.Repeat([]byte{8}, 32), app("x")), ErrRecord, "bad record MAC"},
		{"alert", sealedStream(t, secret, typed(recordAlert, 2, 40)), nil, "handshake failure"},
		{"bad alert", sealedStream(t, secret, typed(recordAlert, 2)), ErrRecord, "alert of 1 bytes"},
		{"unknown content type", sealedStream(t, secret, typed(99, 1)), ErrRecord, "content type 99"},
		{"only padding", sealedStream(t, secret, typed(0)), ErrRecord, "without content type"},
		{"post-handshake certificate request", sealedStream(t, secret, typed(recordHandshake, 13, 0, 0, 0)), ErrRecord, "message type 13"},
		{"bad KeyUpdate", sealedStream(t, secret, typed(recordHandshake, msgKeyUpdate, 0, 0, 1, 5)), ErrRecord, "malformed KeyUpdate"},
		{"KeyUpdate not at record end", sealedStream(t, secret, typed(recordHandshake, msgKeyUpdate, 0, 0, 1, 0, 4)), ErrRecord, "after KeyUpdate"},
		{"huge handshake message", sealedStream(t, secret, typed(recordHandshake, 4, 0xff, 0, 0)), ErrRecord, "post-handshake message of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := readerOf(t, secret, tc.stream)
			_, err := io.ReadAll(r)
			if err == nil {
				t.Fatal("bad input accepted")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Fatalf("error %v, want %v", err, tc.wantIs)
			}
			if tc.want != "" && !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestRecordsPostHandshakeMessages: tickets are skipped, messages may span records, and
// application data around them is delivered.
func TestRecordsPostHandshakeMessages(t *testing.T) {
	secret := bytes.Repeat([]byte{9}, 32)
	ticket := append([]byte{msgNewSessionTicket, 0, 0, 6}, "tick12"...)
	stream := sealedStream(t, secret,
		[2][]byte{{recordApplication}, []byte("ab")},
		[2][]byte{{recordHandshake}, ticket[:3]},
		[2][]byte{{recordHandshake}, ticket[3:]},
		[2][]byte{{recordApplication}, nil},
		[2][]byte{{recordApplication}, []byte("cd")},
		[2][]byte{{recordAlert}, []byte{1, 0}},
	)
	got, err := io.ReadAll(readerOf(t, secret, stream))
	if err != nil || string(got) != "abcd" {
		t.Fatalf("got %q, %v; want abcd, <nil>", got, err)
	}
}

// TestRecordsSuites: every TLS 1.3 suite seals and opens, across sender key updates
// (crypto/tls on AES hardware only ever negotiates AES-128-GCM, which the interop tests
// cover against crypto/tls itself).
func TestRecordsSuites(t *testing.T) {
	for _, suite := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		t.Run(tls.CipherSuiteName(suite), func(t *testing.T) {
			h, _, err := suiteHash(suite)
			if err != nil {
				t.Fatal(err)
			}
			secret := bytes.Repeat([]byte{5}, h().Size())
			var recs [][2][]byte
			var want []byte
			for i := range 10 {
				b := bytes.Repeat([]byte{byte('a' + i)}, 1000*i+1)
				recs = append(recs, [2][]byte{{recordApplication}, b})
				want = append(want, b...)
			}
			// A KeyUpdate after every 3 records.
			stream := sealedStreamSuite(t, suite, 3, secret, recs...)
			r := readerOfSuite(t, suite, secret, stream)
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes (%v), want %d", len(got), err, len(want))
			}
			if bytes.Equal(r.rk.secret, secret) {
				t.Fatal("reader never applied a KeyUpdate")
			}
			// The wrong suite for the same secret fails authentication.
			other := tls.TLS_AES_128_GCM_SHA256
			if suite == other {
				other = tls.TLS_CHACHA20_POLY1305_SHA256
			}
			if _, err := io.ReadAll(readerOfSuite(t, other, secret, stream)); !errors.Is(err, ErrRecord) {
				t.Fatalf("stream opened with the wrong suite: %v", err)
			}
		})
	}
	if _, _, err := suiteHash(0x1305); err == nil {
		t.Fatal("TLS_AES_128_CCM_8_SHA256 accepted; it is not implemented")
	}
}

// FuzzRecordsRead feeds the reader one authentic record of any content type and content
// (so post-handshake message parsing, alerts and padding are reached), then raw bytes.
func FuzzRecordsRead(f *testing.F) {
	secret := bytes.Repeat([]byte{7}, 32)
	f.Add(byte(recordApplication), []byte("hello"), []byte{})
	f.Add(byte(recordHandshake), []byte{msgKeyUpdate, 0, 0, 1, 1}, []byte{23, 3, 3, 0, 20})
	f.Add(byte(recordHandshake), []byte{msgNewSessionTicket, 0, 0, 2, 0}, []byte{})
	f.Add(byte(recordAlert), []byte{2, 80}, []byte{})
	f.Fuzz(func(t *testing.T, typ byte, content, raw []byte) {
		if len(content) > maxPlaintext {
			content = content[:maxPlaintext]
		}
		stream := append(sealedStream(t, secret, [2][]byte{{typ}, content}), raw...)
		r := readerOf(t, secret, stream)
		for _, n := range []int{1, 9, 1 << 15} {
			if _, err := r.Read(make([]byte, n)); err != nil {
				return
			}
		}
	})
}
