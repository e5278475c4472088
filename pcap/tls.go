package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// TLS record content types and versions.
const (
	RecordChangeCipherSpec = 20
	RecordAlert            = 21
	RecordHandshake        = 22
	RecordApplicationData  = 23

	VersionTLS10 = 0x0301
	VersionTLS11 = 0x0302
	VersionTLS12 = 0x0303
	VersionTLS13 = 0x0304
)

var (
	// ErrNoServerHello: the stream holds no (complete) ServerHello.
	ErrNoServerHello = errors.New("no TLS ServerHello")
	// ErrNotTLS: the stream does not start with a TLS record.
	ErrNotTLS = errors.New("not a TLS stream")
	// ErrClearRecord: a TLS 1.3 stream carries a record after the ServerHello whose type is
	// not application_data (23), i.e. something other than ciphertext.
	ErrClearRecord = errors.New("TLS 1.3 record in clear after ServerHello")
)

// helloRetryRandom marks a HelloRetryRequest (RFC 8446 4.1.3).
var helloRetryRandom = [32]byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

// Record is one TLS record header.
type Record struct {
	Type    uint8
	Version uint16
	Length  int
}

// TLSInfo is what a server->client TLS stream reveals.
type TLSInfo struct {
	Version     uint16 // negotiated: supported_versions when present, else ServerHello version
	CipherSuite uint16
	Records     []Record
	// ClearRecords counts, for TLS 1.3, records after the ServerHello with a type other than
	// application_data, not counting one ChangeCipherSpec (middlebox compatibility).
	ClearRecords int
	Truncated    bool // the stream ends inside a record (capture stopped mid-record)
}

// AnalyzeTLS parses the TLS records of a reassembled server->client stream.
func AnalyzeTLS(serverToClient []byte) (TLSInfo, error) {
	var info TLSInfo
	b := serverToClient
	if len(b) == 0 {
		return info, fmt.Errorf("%w: empty stream", ErrNotTLS)
	}
	var hs []byte // handshake bytes before the real ServerHello is found
	found := false
	ccsSeen := false
	for len(b) > 0 {
		if len(b) < 5 {
			info.Truncated = true
			break
		}
		r := Record{Type: b[0], Version: binary.BigEndian.Uint16(b[1:3]), Length: int(binary.BigEndian.Uint16(b[3:5]))}
		if r.Type < RecordChangeCipherSpec || r.Type > 24 || r.Version>>8 != 3 || r.Length > 1<<14+2048 {
			if len(info.Records) == 0 {
				return info, fmt.Errorf("%w: first bytes %x", ErrNotTLS, b[:5])
			}
			return info, fmt.Errorf("%w: bad record header %x after %d records", ErrFormat, b[:5], len(info.Records))
		}
		if len(b) < 5+r.Length {
			info.Truncated = true
			info.Records = append(info.Records, r)
			break
		}
		body := b[5 : 5+r.Length]
		b = b[5+r.Length:]
		info.Records = append(info.Records, r)
		if !found {
			if r.Type != RecordHandshake {
				if r.Type == RecordAlert {
					return info, fmt.Errorf("%w: alert %x before ServerHello", ErrNoServerHello, body)
				}
				continue
			}
			hs = append(hs, body...)
			var err error
			found, hs, err = findServerHello(hs, &info)
			if err != nil {
				return info, err
			}
			continue
		}
		if info.Version == VersionTLS13 && r.Type != RecordApplicationData {
			if r.Type == RecordChangeCipherSpec && !ccsSeen {
				ccsSeen = true
				continue
			}
			info.ClearRecords++
		}
	}
	if !found {
		return info, ErrNoServerHello
	}
	return info, nil
}

// findServerHello consumes complete handshake messages from hs. It skips a
// HelloRetryRequest (the real ServerHello follows it).
func findServerHello(hs []byte, info *TLSInfo) (bool, []byte, error) {
	for len(hs) >= 4 {
		typ := hs[0]
		n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
		if len(hs) < 4+n {
			return false, hs, nil // continues in the next record
		}
		msg := hs[4 : 4+n]
		hs = hs[4+n:]
		if typ != 2 {
			continue
		}
		hrr, err := parseServerHello(msg, info)
		if err != nil {
			return false, hs, err
		}
		if !hrr {
			return true, hs, nil
		}
	}
	return false, hs, nil
}

func parseServerHello(m []byte, info *TLSInfo) (hrr bool, err error) {
	bad := func(what string) error { return fmt.Errorf("%w: ServerHello %s", ErrFormat, what) }
	if len(m) < 2+32+1 {
		return false, bad("too short")
	}
	version := binary.BigEndian.Uint16(m[0:2])
	hrr = [32]byte(m[2:34]) == helloRetryRandom
	m = m[34:]
	sid := int(m[0])
	if len(m) < 1+sid+3 {
		return false, bad("session id truncated")
	}
	m = m[1+sid:]
	info.CipherSuite = binary.BigEndian.Uint16(m[0:2])
	m = m[3:] // cipher suite, compression method
	info.Version = version
	if len(m) == 0 {
		return hrr, nil // no extensions (TLS <= 1.2)
	}
	if len(m) < 2 {
		return false, bad("extensions length truncated")
	}
	ext := m[2:]
	if n := int(binary.BigEndian.Uint16(m[0:2])); n <= len(ext) {
		ext = ext[:n]
	} else {
		return false, bad("extensions truncated")
	}
	for len(ext) >= 4 {
		typ := binary.BigEndian.Uint16(ext[0:2])
		n := int(binary.BigEndian.Uint16(ext[2:4]))
		if len(ext) < 4+n {
			return false, bad("extension truncated")
		}
		if typ == 43 { // supported_versions: the selected version
			if n != 2 {
				return false, bad("supported_versions length")
			}
			info.Version = binary.BigEndian.Uint16(ext[4:6])
		}
		ext = ext[4+n:]
	}
	return hrr, nil
}

// NegotiatedTLSVersion returns the TLS version the server selected in a reassembled
// server->client stream (VersionTLS13 for TLS 1.3). For TLS 1.3 it also checks that every
// record after the ServerHello (but one ChangeCipherSpec) is application_data, returning
// the version and an error wrapping ErrClearRecord otherwise.
func NegotiatedTLSVersion(serverToClient []byte) (uint16, error) {
	info, err := AnalyzeTLS(serverToClient)
	if err != nil {
		return info.Version, err
	}
	if info.ClearRecords > 0 {
		return info.Version, fmt.Errorf("%w: %d records", ErrClearRecord, info.ClearRecords)
	}
	return info.Version, nil
}
