package pcap

import (
	"encoding/binary"
	"errors"
	"testing"
)

func record(typ uint8, body []byte) []byte {
	h := []byte{typ, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(h[3:], uint16(len(body)))
	return append(h, body...)
}

func handshake(typ uint8, body []byte) []byte {
	n := len(body)
	return append([]byte{typ, byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

func serverHello(random [32]byte, exts ...[]byte) []byte {
	b := []byte{3, 3}
	b = append(b, random[:]...)
	b = append(b, 32)
	b = append(b, make([]byte, 32)...) // session id
	b = append(b, 0x13, 0x01, 0)       // TLS_AES_128_GCM_SHA256, null compression
	if exts == nil {
		return b
	}
	var e []byte
	for _, x := range exts {
		e = append(e, x...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
	return append(b, e...)
}

func ext(typ uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestNegotiatedTLSVersion(t *testing.T) {
	sv13 := ext(43, []byte{3, 4})
	keyShare := ext(51, make([]byte, 36))
	sh13 := handshake(2, serverHello([32]byte{1}, keyShare, sv13))
	hrr := handshake(2, serverHello(helloRetryRandom, sv13))
	sh12 := handshake(2, serverHello([32]byte{2}))
	appData := record(RecordApplicationData, make([]byte, 100))
	ccs := record(RecordChangeCipherSpec, []byte{1})
	tests := []struct {
		name    string
		in      []byte
		want    uint16
		wantErr error
	}{
		{"tls13", cat(record(22, sh13), ccs, appData, appData), VersionTLS13, nil},
		{"tls13 no ccs", cat(record(22, sh13), appData), VersionTLS13, nil},
		{"tls13 after hello retry", cat(record(22, hrr), ccs, record(22, sh13), appData), VersionTLS13, nil},
		{"hello split over records", cat(record(22, sh13[:20]), record(22, sh13[20:]), appData), VersionTLS13, nil},
		{"tls12 without extensions", cat(record(22, sh12), record(22, handshake(11, []byte{0, 0, 0}))), VersionTLS12, nil},
		{"tls12 extensions without supported_versions", cat(record(22, handshake(2, serverHello([32]byte{3}, ext(0xff01, []byte{0})))), ccs, record(22, []byte{1, 2})), VersionTLS12, nil},
		{"truncated last record", cat(record(22, sh13), appData, appData[:30]), VersionTLS13, nil},
		{"tls13 clear handshake after hello", cat(record(22, sh13), ccs, record(22, handshake(8, nil))), VersionTLS13, ErrClearRecord},
		{"tls13 alert in clear", cat(record(22, sh13), appData, record(21, []byte{2, 40})), VersionTLS13, ErrClearRecord},
		{"tls13 second ccs", cat(record(22, sh13), ccs, appData, ccs), VersionTLS13, ErrClearRecord},
		{"empty", nil, 0, ErrNotTLS},
		{"http", []byte("HTTP/1.1 200 OK\r\n\r\n"), 0, ErrNotTLS},
		{"no server hello", cat(record(22, handshake(11, []byte{0, 0, 0}))), 0, ErrNoServerHello},
		{"alert first", record(21, []byte{2, 40}), 0, ErrNoServerHello},
		{"hello cut short", record(22, handshake(2, []byte{3, 3, 1})), 0, ErrFormat},
		{"bad supported_versions", record(22, handshake(2, serverHello([32]byte{}, ext(43, []byte{3})))), 0, ErrFormat},
		{"extension overruns", record(22, handshake(2, append(serverHello([32]byte{}), 0, 9, 0, 43))), 0, ErrFormat},
		{"garbage after records", cat(record(22, sh13), []byte("garbage here")), 0, ErrFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NegotiatedTLSVersion(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.want != 0 && v != tc.want {
				t.Fatalf("version %#x, want %#x", v, tc.want)
			}
		})
	}
}
