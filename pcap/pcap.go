// Package pcap reads classic pcap files (as `tcpdump -w` writes them) and answers the
// questions end-to-end tests ask of a capture: which TCP flows crossed the wire, what they
// carried, whether a marker was visible in clear, and which TLS version protected them.
// It has no dependencies and never panics on malformed input.
package pcap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"
)

// Link types (https://www.tcpdump.org/linktypes.html).
const (
	LinkTypeNull      = 0
	LinkTypeEthernet  = 1
	LinkTypeRaw       = 101 // raw IPv4/IPv6
	LinkTypeLinuxSLL  = 113
	LinkTypeIPv4      = 228
	LinkTypeIPv6      = 229
	LinkTypeLinuxSLL2 = 276
	linkTypeRawBSD    = 12 // DLT_RAW on most platforms
	linkTypeRawBSD14  = 14 // DLT_RAW on some BSDs
)

// IP protocol numbers.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP flags as in Packet.Flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
	URG = 0x20
	ECE = 0x40
	CWR = 0x80
)

// MaxRecord bounds one record's captured length, so a corrupt length cannot exhaust memory.
const MaxRecord = 16 << 20

var (
	// ErrFormat wraps every error about malformed input.
	ErrFormat = errors.New("malformed pcap")
	// ErrLinkType is returned for a link type this package does not decode.
	ErrLinkType = errors.New("unsupported link type")
)

// Packet is one IP packet from a capture. Src and Dst carry ports for TCP and UDP (0 for
// other protocols); Payload is the transport payload (the IP payload for other protocols).
type Packet struct {
	Time     time.Time
	Src, Dst netip.AddrPort
	Proto    uint8
	Flags    uint8  // TCP flags
	Seq, Ack uint32 // TCP sequence and acknowledgement numbers
	Payload  []byte
	// Fragment is set for a non-first IPv4/IPv6 fragment: Payload is then raw fragment data.
	Fragment bool
	// Truncated is set when the capture kept less than the whole frame (snaplen).
	Truncated bool
}

// String renders p like a tcpdump line, for failure messages.
func (p Packet) String() string {
	s := fmt.Sprintf("%s %s > %s proto %d", p.Time.UTC().Format("15:04:05.000000"), p.Src, p.Dst, p.Proto)
	if p.Proto == ProtoTCP {
		s += fmt.Sprintf(" [%s] seq %d ack %d", flagString(p.Flags), p.Seq, p.Ack)
	}
	return s + fmt.Sprintf(" len %d", len(p.Payload))
}

func flagString(f uint8) string {
	const names = "FSRPAUEC"
	var b []byte
	for i := 0; i < 8; i++ {
		if f&(1<<i) != 0 {
			b = append(b, names[i])
		}
	}
	if len(b) == 0 {
		return "."
	}
	return string(b)
}

// ReadFile reads every IP packet of a pcap file.
func ReadFile(path string) ([]Packet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read pcap: %w", err)
	}
	defer f.Close()
	pkts, err := Read(f)
	if err != nil {
		return pkts, fmt.Errorf("read pcap %s: %w", path, err)
	}
	return pkts, nil
}

// Read reads every IP packet of a pcap stream. Non-IP frames (ARP, ...) are skipped. On a
// malformed record it returns the packets before it and an error wrapping ErrFormat.
func Read(r io.Reader) ([]Packet, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [24]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: file header: %w", ErrFormat, err)
	}
	var bo binary.ByteOrder
	nano := false
	switch {
	case binary.LittleEndian.Uint32(hdr[:4]) == 0xa1b2c3d4:
		bo = binary.LittleEndian
	case binary.BigEndian.Uint32(hdr[:4]) == 0xa1b2c3d4:
		bo = binary.BigEndian
	case binary.LittleEndian.Uint32(hdr[:4]) == 0xa1b23c4d:
		bo, nano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(hdr[:4]) == 0xa1b23c4d:
		bo, nano = binary.BigEndian, true
	case binary.BigEndian.Uint32(hdr[:4]) == 0x0a0d0d0a:
		return nil, fmt.Errorf("%w: pcapng is not supported (write with tcpdump -w, or convert)", ErrFormat)
	default:
		return nil, fmt.Errorf("%w: bad magic %#x", ErrFormat, hdr[:4])
	}
	if major := bo.Uint16(hdr[4:6]); major != 2 {
		return nil, fmt.Errorf("%w: version %d.%d", ErrFormat, major, bo.Uint16(hdr[6:8]))
	}
	// The upper bits of the link type field carry FCS information.
	link := bo.Uint32(hdr[20:24]) & 0x0fffffff
	switch link {
	case LinkTypeNull, LinkTypeEthernet, LinkTypeRaw, LinkTypeLinuxSLL, LinkTypeIPv4,
		LinkTypeIPv6, LinkTypeLinuxSLL2, linkTypeRawBSD, linkTypeRawBSD14:
	default:
		return nil, fmt.Errorf("%w %d", ErrLinkType, link)
	}

	var pkts []Packet
	var rec [16]byte
	for i := 0; ; i++ {
		if _, err := io.ReadFull(br, rec[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return pkts, nil
			}
			// tcpdump killed mid-write leaves a partial record: still an error, with the
			// packets read so far.
			return pkts, fmt.Errorf("%w: record %d header: %w", ErrFormat, i, err)
		}
		sec, frac := bo.Uint32(rec[0:4]), bo.Uint32(rec[4:8])
		incl, orig := bo.Uint32(rec[8:12]), bo.Uint32(rec[12:16])
		if incl > MaxRecord {
			return pkts, fmt.Errorf("%w: record %d: captured length %d exceeds %d", ErrFormat, i, incl, MaxRecord)
		}
		if incl > orig && orig != 0 {
			return pkts, fmt.Errorf("%w: record %d: captured length %d > original length %d", ErrFormat, i, incl, orig)
		}
		data, err := io.ReadAll(io.LimitReader(br, int64(incl)))
		if err != nil {
			return pkts, fmt.Errorf("%w: record %d data: %w", ErrFormat, i, err)
		}
		if len(data) != int(incl) {
			return pkts, fmt.Errorf("%w: record %d: %d of %d bytes: %w", ErrFormat, i, len(data), incl, io.ErrUnexpectedEOF)
		}
		var ts time.Time
		if nano {
			ts = time.Unix(int64(sec), int64(frac))
		} else {
			if frac >= 1e6 {
				return pkts, fmt.Errorf("%w: record %d: microseconds %d", ErrFormat, i, frac)
			}
			ts = time.Unix(int64(sec), int64(frac)*1e3)
		}
		p, ok, err := decodeFrame(link, data)
		if err != nil {
			return pkts, fmt.Errorf("%w: record %d: %w", ErrFormat, i, err)
		}
		if ok {
			p.Time = ts
			p.Truncated = incl < orig
			pkts = append(pkts, p)
		}
	}
}

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88a8
)

// decodeFrame strips the link header; ok is false for frames that do not carry IP.
func decodeFrame(link uint32, b []byte) (Packet, bool, error) {
	var etype uint16
	switch link {
	case LinkTypeEthernet:
		if len(b) < 14 {
			return Packet{}, false, fmt.Errorf("ethernet header: %d bytes", len(b))
		}
		etype, b = binary.BigEndian.Uint16(b[12:14]), b[14:]
		for etype == etherTypeVLAN || etype == etherTypeQinQ {
			if len(b) < 4 {
				return Packet{}, false, errors.New("vlan tag truncated")
			}
			etype, b = binary.BigEndian.Uint16(b[2:4]), b[4:]
		}
	case LinkTypeLinuxSLL:
		if len(b) < 16 {
			return Packet{}, false, fmt.Errorf("linux cooked header: %d bytes", len(b))
		}
		etype, b = binary.BigEndian.Uint16(b[14:16]), b[16:]
	case LinkTypeLinuxSLL2:
		if len(b) < 20 {
			return Packet{}, false, fmt.Errorf("linux cooked v2 header: %d bytes", len(b))
		}
		etype, b = binary.BigEndian.Uint16(b[0:2]), b[20:]
	case LinkTypeNull:
		if len(b) < 4 {
			return Packet{}, false, fmt.Errorf("null header: %d bytes", len(b))
		}
		// The address family is in host byte order of the capturing machine.
		fam := binary.LittleEndian.Uint32(b[:4])
		if fam > 0xffff {
			fam = binary.BigEndian.Uint32(b[:4])
		}
		b = b[4:]
		switch fam {
		case 2:
			etype = etherTypeIPv4
		case 10, 24, 28, 30:
			etype = etherTypeIPv6
		default:
			return Packet{}, false, nil
		}
	default: // raw IP
		if len(b) == 0 {
			return Packet{}, false, errors.New("empty raw IP packet")
		}
		switch b[0] >> 4 {
		case 4:
			etype = etherTypeIPv4
		case 6:
			etype = etherTypeIPv6
		default:
			return Packet{}, false, fmt.Errorf("raw packet with IP version %d", b[0]>>4)
		}
	}
	switch etype {
	case etherTypeIPv4:
		p, err := decodeIPv4(b)
		return p, err == nil, err
	case etherTypeIPv6:
		p, err := decodeIPv6(b)
		return p, err == nil, err
	}
	return Packet{}, false, nil
}

func decodeIPv4(b []byte) (Packet, error) {
	if len(b) < 20 {
		return Packet{}, fmt.Errorf("ipv4 header: %d bytes", len(b))
	}
	if v := b[0] >> 4; v != 4 {
		return Packet{}, fmt.Errorf("ipv4 header: version %d", v)
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl {
		return Packet{}, fmt.Errorf("ipv4 header: length %d with %d bytes captured", ihl, len(b))
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	switch {
	case total == 0: // TSO/BIG TCP super-packet: the length is the captured one
		total = len(b)
	case total < ihl:
		return Packet{}, fmt.Errorf("ipv4 total length %d < header length %d", total, ihl)
	}
	// Ethernet pads short frames: trust the IP length, not the frame length.
	if total < len(b) {
		b = b[:total]
	}
	p := Packet{Proto: b[9]}
	src := netip.AddrFrom4([4]byte(b[12:16]))
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	frag := binary.BigEndian.Uint16(b[6:8])
	if frag&0x1fff != 0 {
		p.Fragment = true
		p.Src, p.Dst, p.Payload = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0), b[ihl:]
		return p, nil
	}
	return decodeTransport(p, src, dst, b[ihl:])
}

func decodeIPv6(b []byte) (Packet, error) {
	if len(b) < 40 {
		return Packet{}, fmt.Errorf("ipv6 header: %d bytes", len(b))
	}
	if v := b[0] >> 4; v != 6 {
		return Packet{}, fmt.Errorf("ipv6 header: version %d", v)
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	src := netip.AddrFrom16([16]byte(b[8:24]))
	dst := netip.AddrFrom16([16]byte(b[24:40]))
	next := b[6]
	b = b[40:]
	if plen != 0 && plen < len(b) { // 0: jumbogram or GSO, keep what was captured
		b = b[:plen]
	}
	p := Packet{}
	for {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(b) < 8 {
				return Packet{}, fmt.Errorf("ipv6 extension header %d truncated", next)
			}
			n := (int(b[1]) + 1) * 8
			if len(b) < n {
				return Packet{}, fmt.Errorf("ipv6 extension header %d: length %d with %d bytes", next, n, len(b))
			}
			next, b = b[0], b[n:]
			continue
		case 44: // fragment
			if len(b) < 8 {
				return Packet{}, errors.New("ipv6 fragment header truncated")
			}
			off := binary.BigEndian.Uint16(b[2:4]) >> 3
			next, b = b[0], b[8:]
			if off != 0 {
				p.Proto, p.Fragment = next, true
				p.Src, p.Dst, p.Payload = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0), b
				return p, nil
			}
			continue
		}
		break
	}
	p.Proto = next
	return decodeTransport(p, src, dst, b)
}

func decodeTransport(p Packet, src, dst netip.Addr, b []byte) (Packet, error) {
	switch p.Proto {
	case ProtoTCP:
		if len(b) < 20 {
			return Packet{}, fmt.Errorf("tcp header: %d bytes", len(b))
		}
		off := int(b[12]>>4) * 4
		if off < 20 || len(b) < off {
			return Packet{}, fmt.Errorf("tcp header: data offset %d with %d bytes", off, len(b))
		}
		p.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2]))
		p.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4]))
		p.Seq = binary.BigEndian.Uint32(b[4:8])
		p.Ack = binary.BigEndian.Uint32(b[8:12])
		p.Flags = b[13]
		p.Payload = b[off:]
	case ProtoUDP:
		if len(b) < 8 {
			return Packet{}, fmt.Errorf("udp header: %d bytes", len(b))
		}
		p.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2]))
		p.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4]))
		p.Payload = b[8:]
		if n := int(binary.BigEndian.Uint16(b[4:6])); n >= 8 && n-8 < len(p.Payload) {
			p.Payload = p.Payload[:n-8]
		}
	default:
		p.Src, p.Dst, p.Payload = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0), b
	}
	return p, nil
}
