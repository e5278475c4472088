package hbone

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// An HBONE connection's TLS 1.3 handshake is crypto/tls's; with RecordsOwn (the
// default) its records are ours. RecordsCryptoTLS keeps tls.Conn instead (layer.go).
//
// Once the handshake is done, the connection's traffic secrets (taken from the key log
// callback crypto/tls offers for exactly this kind of export) key the record layer
// below, which replaces tls.Conn for the rest of the connection. crypto/tls copies each
// byte it sends into its own record buffer and issues one write per 16 KiB record, and
// each byte it receives is copied into its input buffer and out again. Here a batch of
// frames is sealed record by record in one output buffer and sent with one write, and
// received records are opened straight into the reader's buffer. The record layer
// implements RFC 8446 section 5 and the post-handshake messages a peer may send:
// NewSessionTicket (ignored: HBONE does not resume) and KeyUpdate (both directions).

// ErrRecord reports a malformed or unauthentic TLS record from the peer.
var ErrRecord = errors.New("tls record")

const (
	recordHeaderLen = 5
	maxPlaintext    = 16384
	maxCiphertext   = maxPlaintext + 256 // RFC 8446 5.2
	maxRecord       = recordHeaderLen + maxCiphertext

	recordAlert       = 21
	recordHandshake   = 22
	recordApplication = 23

	msgNewSessionTicket = 4
	msgKeyUpdate        = 24

	// recordReadAhead is the receive buffer of a connection carrying bulk data: a burst
	// of records is read with one syscall. An idle connection holds only a small buffer.
	recordReadAhead = 128 << 10
	// recordFlushAt bounds the sealed bytes a writer collects before writing them out.
	recordFlushAt = 512 << 10
	// keyUpdateAfter is how many records we seal under one key before a KeyUpdate:
	// well below AES-GCM's limit of 2^24.5 records (RFC 8446 5.5).
	keyUpdateAfter = 1 << 23
)

// trafficSecrets collects what crypto/tls reports through Config.KeyLogWriter during
// one handshake.
type trafficSecrets struct {
	mu             sync.Mutex
	client, server []byte
	next           io.Writer // the configuration's own KeyLogWriter, if any
}

// Write takes one NSS key log line ("LABEL client_random secret").
func (t *trafficSecrets) Write(line []byte) (int, error) {
	f := strings.Fields(string(line))
	if len(f) == 3 {
		var dst *[]byte
		switch f[0] {
		case "CLIENT_TRAFFIC_SECRET_0":
			dst = &t.client
		case "SERVER_TRAFFIC_SECRET_0":
			dst = &t.server
		}
		if dst != nil {
			if b, err := hex.DecodeString(f[2]); err == nil {
				t.mu.Lock()
				*dst = b
				t.mu.Unlock()
			}
		}
	}
	if t.next != nil {
		return t.next.Write(line)
	}
	return len(line), nil
}

// handshakeConn is the socket as crypto/tls sees it during the handshake. It hands
// crypto/tls whole records and never more than the record being read, so that when the
// handshake ends nothing after it sits unread inside crypto/tls: whatever the peer sent
// after its last handshake record stays here for the record layer.
type handshakeConn struct {
	net.Conn
	secrets trafficSecrets
	buf     []byte
	r, w    int
	recLeft int // bytes of the current record not yet given to crypto/tls
}

func newHandshakeConn(nc net.Conn) *handshakeConn {
	return &handshakeConn{Conn: nc, buf: make([]byte, maxRecord)}
}

// keyLog routes cfg's key log through hc (cfg is this connection's own copy) and
// returns cfg.
func (hc *handshakeConn) keyLog(cfg *tls.Config) *tls.Config {
	hc.secrets.next = cfg.KeyLogWriter
	cfg.KeyLogWriter = &hc.secrets
	return cfg
}

func (hc *handshakeConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if hc.recLeft == 0 {
		for hc.w-hc.r < recordHeaderLen {
			if err := hc.fill(); err != nil {
				if hc.w > hc.r {
					break // let crypto/tls see the truncated header and fail on it
				}
				return 0, err
			}
		}
		if hc.w-hc.r >= recordHeaderLen {
			hc.recLeft = recordHeaderLen + int(binary.BigEndian.Uint16(hc.buf[hc.r+3:]))
		} else {
			hc.recLeft = hc.w - hc.r
		}
	}
	if hc.r == hc.w {
		if err := hc.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p[:min(len(p), hc.recLeft)], hc.buf[hc.r:hc.w])
	hc.r += n
	hc.recLeft -= n
	return n, nil
}

func (hc *handshakeConn) fill() error {
	if hc.r == hc.w {
		hc.r, hc.w = 0, 0
	} else if hc.w == len(hc.buf) {
		hc.w = copy(hc.buf, hc.buf[hc.r:hc.w])
		hc.r = 0
	}
	n, err := readSome(hc.Conn, hc.buf[hc.w:])
	hc.w += n
	return err
}

// readSome reads into b and reports an error only when nothing was read.
func readSome(r io.Reader, b []byte) (int, error) {
	n, err := r.Read(b)
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return 0, err
}

// handshakeOwn runs crypto/tls's handshake on nc and returns the connection's own
// record layer and TLS state; on error nc is closed. A server's cfg comes from
// hboneTLS, whose GetConfigForClient routes each handshake's key log to its
// handshakeConn.
func handshakeOwn(ctx context.Context, nc net.Conn, cfg *tls.Config, client bool) (*records, tls.ConnectionState, error) {
	hc := newHandshakeConn(nc)
	var tc *tls.Conn
	if client {
		tc = tls.Client(hc, hc.keyLog(cfg))
	} else {
		tc = tls.Server(hc, cfg)
	}
	st, err := tlsHandshake(ctx, tc)
	var rl *records
	if err == nil {
		rl, err = establish(hc, st, client)
	}
	if err != nil {
		nc.Close()
		return nil, st, err
	}
	return rl, st, nil
}

// establish returns the record layer for a connection whose handshake over hc has
// completed with state st.
func establish(hc *handshakeConn, st tls.ConnectionState, client bool) (*records, error) {
	if hc.recLeft != 0 {
		return nil, fmt.Errorf("handshake ended inside a record: %w", ErrRecord)
	}
	hc.secrets.mu.Lock()
	cs, ss := hc.secrets.client, hc.secrets.server
	hc.secrets.mu.Unlock()
	if cs == nil || ss == nil {
		return nil, errors.New("tls traffic secrets were not reported by the handshake")
	}
	rl := &records{nc: hc.Conn, sock: sockIO(hc.Conn)}
	ws, rs := cs, ss
	if !client {
		ws, rs = ss, cs
	}
	if err := rl.wk.init(st.CipherSuite, ws); err != nil {
		return nil, err
	}
	if err := rl.rk.init(st.CipherSuite, rs); err != nil {
		return nil, err
	}
	// The handshake's buffer, with whatever the peer sent after the handshake, becomes
	// the connection's receive buffer.
	rl.w = copy(hc.buf, hc.buf[hc.r:hc.w])
	rl.small, rl.in = hc.buf, hc.buf
	hc.buf = nil
	rl.keyUpdateAfter = keyUpdateAfter
	rl.open = -1
	return rl, nil
}

// trafficKeys protects one direction.
type trafficKeys struct {
	suite  uint16
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	nonce  [12]byte
	seq    uint64
}

func suiteHash(suite uint16) (func() hash.Hash, int, error) {
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		return sha256.New, 16, nil
	case tls.TLS_AES_256_GCM_SHA384:
		return sha512.New384, 32, nil
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		return sha256.New, chacha20poly1305.KeySize, nil
	}
	return nil, 0, fmt.Errorf("tls cipher suite %#04x is not a TLS 1.3 suite", suite)
}

// expandLabel is HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context.
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

func (k *trafficKeys) init(suite uint16, secret []byte) error {
	h, keyLen, err := suiteHash(suite)
	if err != nil {
		return err
	}
	key, err := expandLabel(h, secret, "key", keyLen)
	if err != nil {
		return err
	}
	iv, err := expandLabel(h, secret, "iv", len(k.iv))
	if err != nil {
		return err
	}
	var aead cipher.AEAD
	if suite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		aead, err = chacha20poly1305.New(key)
	} else {
		var b cipher.Block
		if b, err = aes.NewCipher(key); err == nil {
			aead, err = cipher.NewGCM(b)
		}
	}
	if err != nil {
		return fmt.Errorf("record keys: %w", err)
	}
	k.suite, k.secret, k.aead, k.seq = suite, secret, aead, 0
	copy(k.iv[:], iv)
	return nil
}

// update moves to the next generation of traffic secret (RFC 8446 section 7.2).
func (k *trafficKeys) update() error {
	h, _, err := suiteHash(k.suite)
	if err != nil {
		return err
	}
	next, err := expandLabel(h, k.secret, "traffic upd", h().Size())
	if err != nil {
		return err
	}
	return k.init(k.suite, next)
}

// nextNonce returns the per-record nonce (RFC 8446 section 5.3) and advances the
// sequence number.
func (k *trafficKeys) nextNonce() []byte {
	k.nonce = k.iv
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], k.seq)
	for i, b := range seq {
		k.nonce[4+i] ^= b
	}
	k.seq++
	return k.nonce[:]
}

// records is the record layer of one established connection. One goroutine reads;
// writers are serialized by wmu (the connection's writing role, and the reader when it
// answers a KeyUpdate).
type records struct {
	nc   net.Conn
	sock io.ReadWriter // where nc is read and written: sockIO(nc)

	// Read side, owned by the reader.
	rk      trafficKeys
	small   []byte  // the connection's own receive buffer, one record long
	big     *[]byte // pooled read-ahead buffer, held during bulk transfer
	in      []byte  // small or *big
	r, w    int     // in[r:w] is received and not yet opened
	bulk    bool    // the last socket read filled the buffer, or the read-ahead buffer beyond one record
	plain   []byte  // opened application data not yet returned, inside in
	hs      []byte  // partial post-handshake message
	tickets int     // NewSessionTickets skipped
	rerr    error   // sticky
	// beforeRead runs in the reader before each socket read (which may wait).
	beforeRead func()

	// Write side.
	wmu            sync.Mutex
	wk             trafficKeys
	out            *[]byte // sealed records, then the open record; nil when flushed
	open           int     // offset of the open record's header in *out, or -1
	werr           error
	keyUpdateAfter uint64
	// pending asks the connection's writer to flush soon; set before the reader runs.
	pending func()
}

var (
	readAheadPool = sync.Pool{New: func() any { b := make([]byte, recordReadAhead); return &b }}
	outPool       = sync.Pool{New: func() any { b := make([]byte, 0, recordFlushAt+2*maxRecord); return &b }}
)

// Read returns opened application data. Whole records are opened straight into p when p
// has room for them; only a record larger than what is left of p is opened in place and
// copied out.
func (rl *records) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(rl.plain) > 0 {
			k := copy(p[n:], rl.plain)
			rl.plain = rl.plain[k:]
			n += k
			continue
		}
		if rl.rerr != nil || (n > 0 && !rl.buffered()) {
			break
		}
		k, err := rl.readRecord(p[n:])
		n += k
		if err != nil {
			rl.rerr = err
		}
	}
	if n > 0 || len(p) == 0 {
		return n, nil
	}
	return 0, rl.rerr
}

// buffered reports whether a whole record is waiting in the receive buffer.
func (rl *records) buffered() bool {
	if rl.w-rl.r < recordHeaderLen {
		return false
	}
	return rl.w-rl.r >= recordHeaderLen+int(binary.BigEndian.Uint16(rl.in[rl.r+3:]))
}

// readRecord reads and opens one record, returning how many application bytes it put
// into dst (the rest, if any, is left in rl.plain).
func (rl *records) readRecord(dst []byte) (int, error) {
	need := recordHeaderLen
	for {
		avail := rl.w - rl.r
		if avail >= recordHeaderLen {
			hdr := rl.in[rl.r : rl.r+recordHeaderLen]
			length := int(binary.BigEndian.Uint16(hdr[3:]))
			switch {
			case hdr[0] != recordApplication:
				return 0, fmt.Errorf("%w: unexpected outer record type %d", ErrRecord, hdr[0])
			case hdr[1] != 3 || hdr[2] != 3:
				return 0, fmt.Errorf("%w: bad legacy version %#02x%02x", ErrRecord, hdr[1], hdr[2])
			case length > maxCiphertext:
				return 0, fmt.Errorf("%w: record of %d bytes exceeds %d", ErrRecord, length, maxCiphertext)
			case length <= rl.rk.aead.Overhead():
				return 0, fmt.Errorf("%w: record of %d bytes is too short", ErrRecord, length)
			}
			need = recordHeaderLen + length
			if avail >= need {
				break
			}
		}
		if err := rl.fill(need); err != nil {
			if errors.Is(err, io.EOF) && rl.w > rl.r {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	hdr := rl.in[rl.r : rl.r+recordHeaderLen]
	ct := rl.in[rl.r+recordHeaderLen : rl.r+need]
	rl.r += need
	inner := len(ct) - rl.rk.aead.Overhead()
	var pt []byte
	var err error
	direct := len(dst) >= inner
	if direct {
		pt, err = rl.rk.aead.Open(dst[:0], rl.rk.nextNonce(), ct, hdr)
	} else {
		pt, err = rl.rk.aead.Open(ct[:0], rl.rk.nextNonce(), ct, hdr)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: bad record MAC", ErrRecord)
	}
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 {
		return 0, fmt.Errorf("%w: record without content type", ErrRecord)
	}
	typ, content := pt[i], pt[:i]
	if len(content) > maxPlaintext {
		return 0, fmt.Errorf("%w: record content of %d bytes exceeds %d", ErrRecord, len(content), maxPlaintext)
	}
	switch typ {
	case recordApplication:
		if direct {
			return len(content), nil
		}
		rl.plain = content
		return 0, nil
	case recordHandshake:
		return 0, rl.handshakeMessages(content)
	case recordAlert:
		if len(content) != 2 {
			return 0, fmt.Errorf("%w: alert of %d bytes", ErrRecord, len(content))
		}
		if content[1] == 0 { // close_notify
			return 0, io.EOF
		}
		return 0, fmt.Errorf("peer sent tls alert: %w", tls.AlertError(content[1]))
	}
	return 0, fmt.Errorf("%w: unexpected record content type %d", ErrRecord, typ)
}

// fill reads from the socket until in[r:w] holds need bytes or a read returns. A read
// that fills the buffer moves the connection to a pooled read-ahead buffer, which stays
// while reads bring more than a record; the first drain after a smaller read (the peer
// went quiet) gives it back.
func (rl *records) fill(need int) error {
	switch {
	case rl.bulk && rl.big == nil:
		rl.big = readAheadPool.Get().(*[]byte)
		rl.w = copy(*rl.big, rl.in[rl.r:rl.w])
		rl.r = 0
		rl.in = *rl.big
	case rl.r == rl.w:
		rl.r, rl.w = 0, 0
		if !rl.bulk && rl.big != nil {
			readAheadPool.Put(rl.big)
			rl.big = nil
			rl.in = rl.small
		}
	case len(rl.in)-rl.r < need:
		rl.w = copy(rl.in, rl.in[rl.r:rl.w])
		rl.r = 0
	}
	if rl.beforeRead != nil {
		rl.beforeRead()
	}
	n, err := readSome(rl.sock, rl.in[rl.w:])
	// Bulk: the read filled the buffer, or filled the read-ahead buffer with more than
	// the small one holds. A flow whose bursts (a TSO segment is 64 KiB) do not fill
	// the read-ahead buffer must keep it all the same: given back at each drain, the
	// next read would take one record and the one after switch back.
	rl.bulk = rl.w+n == len(rl.in) || (rl.big != nil && n >= len(rl.small))
	rl.w += n
	return err
}

// handshakeMessages handles post-handshake messages, which may span records.
func (rl *records) handshakeMessages(b []byte) error {
	rl.hs = append(rl.hs, b...)
	for len(rl.hs) >= 4 {
		typ := rl.hs[0]
		n := int(rl.hs[1])<<16 | int(rl.hs[2])<<8 | int(rl.hs[3])
		if n > 64<<10 {
			return fmt.Errorf("%w: post-handshake message of %d bytes", ErrRecord, n)
		}
		if len(rl.hs) < 4+n {
			return nil
		}
		body := rl.hs[4 : 4+n]
		rest := len(rl.hs) - 4 - n
		switch typ {
		case msgNewSessionTicket:
			rl.tickets++ // HBONE connections are not resumed
		case msgKeyUpdate:
			if n != 1 || body[0] > 1 {
				return fmt.Errorf("%w: malformed KeyUpdate", ErrRecord)
			}
			if rest != 0 {
				return fmt.Errorf("%w: data after KeyUpdate in the same record", ErrRecord)
			}
			if err := rl.rk.update(); err != nil {
				return err
			}
			if body[0] == 1 {
				if err := rl.answerKeyUpdate(); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("%w: unexpected post-handshake message type %d", ErrRecord, typ)
		}
		rl.hs = rl.hs[4+n:]
	}
	if len(rl.hs) == 0 {
		rl.hs = nil
	}
	return nil
}

// answerKeyUpdate answers a peer's update_requested with our own KeyUpdate. The reader
// does not write to the socket itself (it must not block on a peer that is not
// reading); the connection's writer sends it with its next flush.
func (rl *records) answerKeyUpdate() error {
	rl.wmu.Lock()
	if rl.werr != nil {
		rl.wmu.Unlock()
		return rl.werr
	}
	rl.keyUpdateLocked(false)
	rl.wmu.Unlock()
	if rl.pending != nil {
		rl.pending()
		return nil
	}
	return rl.Flush()
}

// Write appends p to the open record, sealing each record as it fills. Nothing reaches
// the socket before Flush unless the batch outgrows recordFlushAt.
func (rl *records) Write(p []byte) (int, error) {
	rl.wmu.Lock()
	defer rl.wmu.Unlock()
	if rl.werr != nil {
		return 0, rl.werr
	}
	n := 0
	for len(p) > 0 {
		if rl.out == nil || rl.open < 0 {
			rl.openRecordLocked()
		}
		b := *rl.out
		k := min(maxPlaintext-(len(b)-rl.open-recordHeaderLen), len(p))
		b = append(b, p[:k]...)
		*rl.out = b
		p, n = p[k:], n+k
		if len(b)-rl.open-recordHeaderLen == maxPlaintext {
			rl.sealLocked(recordApplication)
			if len(*rl.out) >= recordFlushAt {
				if err := rl.flushLocked(); err != nil {
					return n, err
				}
			}
		}
	}
	return n, nil
}

// Flush seals the open record and writes everything sealed.
func (rl *records) Flush() error {
	rl.wmu.Lock()
	defer rl.wmu.Unlock()
	if rl.werr != nil {
		return rl.werr
	}
	return rl.flushLocked()
}

// CloseNotify sends close_notify after everything written so far: the peer reads a
// clean end of the connection rather than a truncation.
func (rl *records) CloseNotify() error {
	rl.wmu.Lock()
	defer rl.wmu.Unlock()
	if rl.werr != nil {
		return rl.werr
	}
	if rl.open >= 0 {
		rl.sealLocked(recordApplication)
	}
	rl.openRecordLocked()
	*rl.out = append(*rl.out, 1, 0) // warning, close_notify
	rl.sealLocked(recordAlert)
	return rl.flushLocked()
}

func (rl *records) openRecordLocked() {
	if rl.out == nil {
		rl.out = outPool.Get().(*[]byte)
	}
	if rl.wk.seq >= rl.keyUpdateAfter {
		rl.keyUpdateLocked(false)
	}
	rl.open = len(*rl.out)
	*rl.out = append(*rl.out, recordApplication, 3, 3, 0, 0)
}

// keyUpdateLocked sends a KeyUpdate under the current key and switches to the next.
func (rl *records) keyUpdateLocked(request bool) {
	if rl.out == nil {
		rl.out = outPool.Get().(*[]byte)
	}
	if rl.open >= 0 {
		rl.sealLocked(recordApplication)
	}
	rl.open = len(*rl.out)
	req := byte(0)
	if request {
		req = 1
	}
	*rl.out = append(*rl.out, recordApplication, 3, 3, 0, 0, msgKeyUpdate, 0, 0, 1, req)
	rl.sealLocked(recordHandshake)
	if err := rl.wk.update(); err != nil {
		rl.werr = err
	}
}

// sealLocked closes the open record with content type typ and encrypts it in place.
func (rl *records) sealLocked(typ byte) {
	b := append(*rl.out, typ)
	start := rl.open + recordHeaderLen
	over := rl.wk.aead.Overhead()
	if cap(b)-len(b) < over {
		nb := make([]byte, len(b), 2*cap(b)+over)
		copy(nb, b)
		b = nb
	}
	*rl.out = b[:rl.open+rl.wk.sealInPlace(b[rl.open:], len(b)-start)]
	rl.open = -1
}

// sealInPlace encrypts the record at the start of rec, whose header has its type and
// version set and which holds inner bytes of inner plaintext (content and content
// type), with room after them for the tag. It returns the sealed record's length.
func (k *trafficKeys) sealInPlace(rec []byte, inner int) int {
	hdr := rec[:recordHeaderLen]
	binary.BigEndian.PutUint16(hdr[3:], uint16(inner+k.aead.Overhead()))
	body := rec[recordHeaderLen : recordHeaderLen+inner]
	return recordHeaderLen + len(k.aead.Seal(body[:0], k.nextNonce(), body, hdr))
}

func (rl *records) flushLocked() error {
	if rl.out == nil {
		return nil
	}
	if rl.open >= 0 {
		if len(*rl.out) == rl.open+recordHeaderLen {
			*rl.out = (*rl.out)[:rl.open] // nothing written into it
			rl.open = -1
		} else {
			rl.sealLocked(recordApplication)
		}
	}
	var err error
	if len(*rl.out) > 0 {
		_, err = rl.sock.Write(*rl.out)
	}
	rl.releaseOutLocked()
	if err != nil {
		rl.werr = err
	}
	return err
}

// releaseOutLocked gives the output buffer back: idle connections do not pin one.
func (rl *records) releaseOutLocked() {
	if rl.out != nil {
		putOut(rl.out)
		rl.out = nil
	}
}

// putOut returns an output buffer to outPool unless it was outgrown.
func putOut(b *[]byte) {
	*b = (*b)[:0]
	if cap(*b) == recordFlushAt+2*maxRecord {
		outPool.Put(b)
	}
}

func (rl *records) netConn() net.Conn { return rl.nc }

func (rl *records) hook(pending, beforeRead func()) {
	rl.pending, rl.beforeRead = pending, beforeRead
}

// Records laid out by the sender itself (see stream.ReadFrom): one HTTP/2 DATA frame
// fills one record, so a full record's plaintext is a frame header and slotPayload bytes
// and a sealed full record takes exactly slotLen bytes. A buffer of such slots is sealed
// in place and written as it is: the data is copied once, by the kernel, into the slot
// it is sent from.
const (
	frameHeaderLen = 9
	aeadTagLen     = 16 // AES-GCM and ChaCha20-Poly1305
	slotPayload    = maxPlaintext - frameHeaderLen
	slotLen        = recordHeaderLen + maxPlaintext + 1 + aeadTagLen
)

// slotData is the payload area of slot i of a slot buffer.
func slotData(buf []byte, i int) []byte {
	off := i*slotLen + recordHeaderLen + frameHeaderLen
	return buf[off : off+slotPayload : off+slotPayload]
}

// writeSlots seals and writes the records in buf that carry n payload bytes: full slots
// and, last, one holding the rest. Each record's frame header is already in place.
// Everything written before goes out first.
func (rl *records) writeSlots(buf []byte, n int) error {
	rl.wmu.Lock()
	defer rl.wmu.Unlock()
	if rl.werr != nil {
		return rl.werr
	}
	// What is queued already (the response HEADERS ahead of a stream's first data, say)
	// goes out with the slots, in one system call where the socket allows.
	if rl.open >= 0 {
		rl.sealLocked(recordApplication)
	}
	if rl.wk.aead.Overhead() != aeadTagLen {
		rl.werr = fmt.Errorf("%w: AEAD overhead %d, slots assume %d", ErrRecord, rl.wk.aead.Overhead(), aeadTagLen)
		return rl.werr
	}
	start, off := 0, 0 // buf[start:off] is sealed and not yet written
	for n > 0 {
		if rl.wk.seq >= rl.keyUpdateAfter {
			// Records sealed under the old key go out before the KeyUpdate.
			if err := rl.writeAfterOutLocked(buf[start:off]); err != nil {
				return err
			}
			start = off
			rl.keyUpdateLocked(false)
			if err := rl.flushLocked(); err != nil {
				return err
			}
		}
		p := min(n, slotPayload)
		n -= p
		rec := buf[off : off+slotLen]
		plain := frameHeaderLen + p
		rec[0], rec[1], rec[2] = recordApplication, 3, 3
		rec[recordHeaderLen+plain] = recordApplication
		off += rl.wk.sealInPlace(rec, plain+1)
	}
	return rl.writeAfterOutLocked(buf[start:off])
}

// pairWriter writes two buffers in one system call (writev) where it can.
type pairWriter interface {
	WritePair(a, b []byte) (int, error)
}

// writeAfterOutLocked writes the sealed output buffer, if any, followed by b, and
// releases the buffer. The open record, if any, is sealed already.
func (rl *records) writeAfterOutLocked(b []byte) error {
	if rl.out == nil || len(*rl.out) == 0 {
		rl.releaseOutLocked()
		return rl.writeLocked(b)
	}
	var err error
	if pw, ok := rl.sock.(pairWriter); ok && len(b) > 0 {
		_, err = pw.WritePair(*rl.out, b)
	} else if _, err = rl.sock.Write(*rl.out); err == nil && len(b) > 0 {
		_, err = rl.sock.Write(b)
	}
	rl.releaseOutLocked()
	if err != nil {
		rl.werr = err
	}
	return err
}

func (rl *records) writeLocked(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if _, err := rl.sock.Write(b); err != nil {
		rl.werr = err
		return err
	}
	return nil
}
