package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// writer builds pcap files for tests.
type writer struct {
	bo   binary.ByteOrder
	nano bool
	link uint32
	buf  bytes.Buffer
}

func newWriter(bo binary.ByteOrder, nano bool, link uint32) *writer {
	w := &writer{bo: bo, nano: nano, link: link}
	magic := uint32(0xa1b2c3d4)
	if nano {
		magic = 0xa1b23c4d
	}
	h := make([]byte, 24)
	bo.PutUint32(h[0:], magic)
	bo.PutUint16(h[4:], 2)
	bo.PutUint16(h[6:], 4)
	bo.PutUint32(h[16:], 262144)
	bo.PutUint32(h[20:], link)
	w.buf.Write(h)
	return w
}

func (w *writer) record(ts time.Time, frame []byte) *writer {
	h := make([]byte, 16)
	w.bo.PutUint32(h[0:], uint32(ts.Unix()))
	frac := uint32(ts.Nanosecond() / 1000)
	if w.nano {
		frac = uint32(ts.Nanosecond())
	}
	w.bo.PutUint32(h[4:], frac)
	w.bo.PutUint32(h[8:], uint32(len(frame)))
	w.bo.PutUint32(h[12:], uint32(len(frame)))
	w.buf.Write(h)
	w.buf.Write(frame)
	return w
}

func (w *writer) bytes() []byte { return w.buf.Bytes() }

type tcpSeg struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    uint8
	payload  []byte
}

func (s tcpSeg) tcp() []byte {
	t := make([]byte, 20, 20+len(s.payload))
	binary.BigEndian.PutUint16(t[0:], s.src.Port())
	binary.BigEndian.PutUint16(t[2:], s.dst.Port())
	binary.BigEndian.PutUint32(t[4:], s.seq)
	binary.BigEndian.PutUint32(t[8:], s.ack)
	t[12] = 5 << 4
	t[13] = s.flags
	return append(t, s.payload...)
}

func ipv4(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	h := make([]byte, 20, 20+len(l4))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	h[8] = 64
	h[9] = proto
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	return append(h, l4...)
}

func ipv6(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	h := make([]byte, 40, 40+len(l4))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6] = proto
	h[7] = 64
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	return append(h, l4...)
}

func ether(etype uint16, ip []byte) []byte {
	f := make([]byte, 14, 14+len(ip)+60)
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], etype)
	f = append(f, ip...)
	for len(f) < 60 { // minimum frame: padding the IP length must cut off
		f = append(f, 0xee)
	}
	return f
}

func sll(etype uint16, ip []byte) []byte {
	h := make([]byte, 16)
	binary.BigEndian.PutUint16(h[14:], etype)
	return append(h, ip...)
}

func sll2(etype uint16, ip []byte) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], etype)
	return append(h, ip...)
}

var (
	cli = netip.MustParseAddrPort("198.18.1.10:40000")
	srv = netip.MustParseAddrPort("198.18.2.10:443")
)

func TestReadLinkTypesAndByteOrders(t *testing.T) {
	ts := time.Unix(1700000000, 123456789)
	seg := tcpSeg{src: cli, dst: srv, seq: 1000, ack: 7, flags: PSH | ACK, payload: []byte("hi")}
	ip4 := ipv4(cli.Addr(), srv.Addr(), ProtoTCP, seg.tcp())
	tests := []struct {
		name  string
		bo    binary.ByteOrder
		nano  bool
		link  uint32
		frame []byte
	}{
		{"ethernet le usec", binary.LittleEndian, false, LinkTypeEthernet, ether(0x0800, ip4)},
		{"ethernet be nsec", binary.BigEndian, true, LinkTypeEthernet, ether(0x0800, ip4)},
		{"vlan", binary.LittleEndian, false, LinkTypeEthernet, append(append(ether(0x8100, nil)[:14], 0, 5, 0x08, 0x00), ip4...)},
		{"sll", binary.LittleEndian, true, LinkTypeLinuxSLL, sll(0x0800, ip4)},
		{"sll2", binary.BigEndian, false, LinkTypeLinuxSLL2, sll2(0x0800, ip4)},
		{"raw", binary.LittleEndian, false, LinkTypeRaw, ip4},
		{"raw12", binary.LittleEndian, false, 12, ip4},
		{"null", binary.LittleEndian, false, LinkTypeNull, append([]byte{2, 0, 0, 0}, ip4...)},
		{"fcs bits in link type", binary.LittleEndian, false, LinkTypeEthernet | 0x10000000, ether(0x0800, ip4)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWriter(tc.bo, tc.nano, tc.link).record(ts, tc.frame)
			w.record(ts, ether(0x0806, make([]byte, 28))) // ARP: skipped (ignored on non-ethernet links too)
			pkts, err := Read(bytes.NewReader(w.bytes()))
			if tc.link != LinkTypeEthernet && tc.link != LinkTypeEthernet|0x10000000 {
				// An ARP frame on another link type decodes as garbage; only check the first.
				if len(pkts) == 0 {
					t.Fatalf("no packets, err %v", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			p := pkts[0]
			if p.Src != cli || p.Dst != srv || p.Proto != ProtoTCP || p.Flags != PSH|ACK || p.Seq != 1000 || p.Ack != 7 {
				t.Fatalf("packet %v", p)
			}
			if string(p.Payload) != "hi" {
				t.Fatalf("payload %q (padding not trimmed?)", p.Payload)
			}
			want := ts.Truncate(time.Microsecond)
			if tc.nano {
				want = ts
			}
			if !p.Time.Equal(want) {
				t.Fatalf("time %v, want %v", p.Time, want)
			}
		})
	}
}

func TestReadIPv6AndUDP(t *testing.T) {
	c6 := netip.MustParseAddrPort("[2001:db8::1]:5000")
	s6 := netip.MustParseAddrPort("[2001:db8::2]:53")
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], c6.Port())
	binary.BigEndian.PutUint16(udp[2:], s6.Port())
	binary.BigEndian.PutUint16(udp[4:], 8+3)
	udp = append(udp, "dns"...)
	// A hop-by-hop header before TCP.
	seg := tcpSeg{src: c6, dst: s6, seq: 1, flags: SYN}
	hbh := append([]byte{ProtoTCP, 0, 0, 0, 0, 0, 0, 0}, seg.tcp()...)
	w := newWriter(binary.LittleEndian, false, LinkTypeEthernet).
		record(time.Unix(1, 0), ether(0x86dd, ipv6(c6.Addr(), s6.Addr(), ProtoUDP, udp))).
		record(time.Unix(2, 0), ether(0x86dd, ipv6(c6.Addr(), s6.Addr(), 0, hbh)))
	pkts, err := Read(bytes.NewReader(w.bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 2 {
		t.Fatalf("%d packets", len(pkts))
	}
	if p := pkts[0]; p.Proto != ProtoUDP || p.Src != c6 || p.Dst != s6 || string(p.Payload) != "dns" {
		t.Fatalf("udp packet %v %q", p, p.Payload)
	}
	if p := pkts[1]; p.Proto != ProtoTCP || p.Flags != SYN || p.Src != c6 {
		t.Fatalf("tcp packet %v", p)
	}
}

func TestReadMalformed(t *testing.T) {
	ts := time.Unix(1, 0)
	good := ipv4(cli.Addr(), srv.Addr(), ProtoTCP, tcpSeg{src: cli, dst: srv, flags: ACK}.tcp())
	eth := func(frame []byte) []byte {
		return newWriter(binary.LittleEndian, false, LinkTypeEthernet).record(ts, ether(0x0800, good)).record(ts, frame).bytes()
	}
	file := newWriter(binary.LittleEndian, false, LinkTypeEthernet).record(ts, ether(0x0800, good)).bytes()
	badIHL := append([]byte(nil), good...)
	badIHL[0] = 0x4f
	badOff := append([]byte(nil), good...)
	badOff[20+12] = 0xf0
	shortTotal := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(shortTotal[2:], 10)
	hugeRecord := newWriter(binary.LittleEndian, false, LinkTypeEthernet).bytes()
	hugeRecord = append(hugeRecord, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f)
	badUsec := newWriter(binary.LittleEndian, false, LinkTypeEthernet).bytes()
	badUsec = append(badUsec, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0)
	pcapng := []byte{0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0x1c, 0x4d, 0x3c, 0x2b, 0x1a}
	pcapng = append(pcapng, make([]byte, 16)...)
	badLink := newWriter(binary.LittleEndian, false, 147).bytes()
	tests := []struct {
		name    string
		in      []byte
		wantErr error
		wantN   int // packets returned before the error
	}{
		{"empty", nil, ErrFormat, 0},
		{"short file header", file[:10], ErrFormat, 0},
		{"bad magic", append([]byte{1, 2, 3, 4}, file[4:]...), ErrFormat, 0},
		{"pcapng", pcapng, ErrFormat, 0},
		{"unsupported link", badLink, ErrLinkType, 0},
		{"truncated record header", file[:24+10], ErrFormat, 0},
		{"truncated record data", file[:len(file)-5], ErrFormat, 0},
		{"huge record", hugeRecord, ErrFormat, 0},
		{"bad microseconds", badUsec, ErrFormat, 0},
		{"short ethernet", eth([]byte{1, 2, 3}), ErrFormat, 1},
		{"short ipv4", eth(ether(0x0800, good[:12])[:14+12]), ErrFormat, 1},
		{"ipv4 ihl beyond data", eth(ether(0x0800, badIHL)), ErrFormat, 1},
		{"ipv4 total < header", eth(ether(0x0800, shortTotal)), ErrFormat, 1},
		{"short tcp", eth(ether(0x0800, ipv4(cli.Addr(), srv.Addr(), ProtoTCP, make([]byte, 10)))), ErrFormat, 1},
		{"tcp offset beyond data", eth(ether(0x0800, badOff)), ErrFormat, 1},
		{"short ipv6", eth(ether(0x86dd, make([]byte, 30))[:14+30]), ErrFormat, 1},
		{"vlan truncated", eth(append(ether(0x8100, nil)[:14], 0)), ErrFormat, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pkts, err := Read(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if len(pkts) != tc.wantN {
				t.Fatalf("%d packets before the error, want %d", len(pkts), tc.wantN)
			}
		})
	}
}

func TestTCPStreamsReassembly(t *testing.T) {
	const isn = 0xfffffff0 // sequence numbers wrap inside the stream
	seg := func(off uint32, data string) Packet {
		return Packet{Src: cli, Dst: srv, Proto: ProtoTCP, Flags: ACK | PSH, Seq: isn + 1 + off, Payload: []byte(data)}
	}
	pkts := []Packet{
		seg(0, "stale data of an older connection on the tuple"),
		{Src: cli, Dst: srv, Proto: ProtoTCP, Flags: SYN, Seq: isn - 1000},
		seg(0, "stale again"),
		{Src: cli, Dst: srv, Proto: ProtoTCP, Flags: SYN, Seq: isn},
		{Src: srv, Dst: cli, Proto: ProtoTCP, Flags: SYN | ACK, Seq: 5, Ack: isn + 1},
		seg(0, "SECRET-"),
		seg(14, "-split"), // out of order
		seg(7, "MARKER"),  // crosses the wrap
		seg(7, "MARKER"),  // retransmission
		seg(10, "KERxx"),  // overlap: only "xx" (13..15) is new; the first copy of a byte wins
		{Src: srv, Dst: cli, Proto: ProtoTCP, Flags: ACK | PSH, Seq: 6, Payload: []byte("reply")},
		{Src: cli, Dst: srv, Proto: ProtoUDP, Payload: []byte("not tcp")},
	}
	st := TCPStreams(pkts)
	if got, want := string(st[Flow{cli, srv}]), "SECRET-MARKERxxsplit"; got != want {
		t.Fatalf("client stream %q, want %q", got, want)
	}
	if got := string(st[Flow{cli, srv}.Reverse()]); got != "reply" {
		t.Fatalf("server stream %q", got)
	}
	if !ContainsPlaintext(pkts, []byte("SECRET-MARKER")) {
		t.Fatal("split marker not found")
	}
	if ContainsPlaintext(pkts, []byte("MARKER-split")) {
		t.Fatal("found a marker that was never sent")
	}
	if c := Connections(pkts); len(c) != 1 || c[0] != (Flow{cli, srv}) {
		t.Fatalf("connections %v", c)
	}
}

func TestReadTruncatedBySnaplen(t *testing.T) {
	seg := tcpSeg{src: cli, dst: srv, flags: ACK, payload: make([]byte, 100)}
	frame := ether(0x0800, ipv4(cli.Addr(), srv.Addr(), ProtoTCP, seg.tcp()))
	w := newWriter(binary.LittleEndian, false, LinkTypeEthernet).record(time.Unix(1, 0), frame[:14+20+20+10])
	b := w.bytes()
	binary.LittleEndian.PutUint32(b[24+12:], uint32(len(frame))) // orig_len
	pkts, err := Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !pkts[0].Truncated || len(pkts[0].Payload) != 10 {
		t.Fatalf("truncated %v, payload %d", pkts[0].Truncated, len(pkts[0].Payload))
	}
}
