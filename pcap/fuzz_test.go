package pcap

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

func FuzzRead(f *testing.F) {
	ts := time.Unix(1, 0)
	seg := tcpSeg{src: cli, dst: srv, seq: 1, flags: PSH | ACK, payload: record(22, handshake(2, serverHello([32]byte{}, ext(43, []byte{3, 4}))))}
	ip4 := ipv4(cli.Addr(), srv.Addr(), ProtoTCP, seg.tcp())
	for _, link := range []uint32{LinkTypeEthernet, LinkTypeLinuxSLL, LinkTypeLinuxSLL2, LinkTypeRaw, LinkTypeNull} {
		var frame []byte
		switch link {
		case LinkTypeEthernet:
			frame = ether(0x0800, ip4)
		case LinkTypeLinuxSLL:
			frame = sll(0x0800, ip4)
		case LinkTypeLinuxSLL2:
			frame = sll2(0x0800, ip4)
		case LinkTypeNull:
			frame = append([]byte{2, 0, 0, 0}, ip4...)
		default:
			frame = ip4
		}
		f.Add(newWriter(binary.LittleEndian, false, link).record(ts, frame).record(ts, frame).bytes())
		f.Add(newWriter(binary.BigEndian, true, link).record(ts, frame).bytes())
	}
	f.Add(newWriter(binary.LittleEndian, false, LinkTypeEthernet).record(ts, ether(0x86dd, ipv6(cli.Addr().Unmap(), srv.Addr(), ProtoTCP, seg.tcp()))).bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		pkts, _ := Read(bytes.NewReader(data))
		for _, s := range TCPStreams(pkts) {
			_, _ = NegotiatedTLSVersion(s)
		}
		_ = ContainsPlaintext(pkts, []byte("x"))
		for _, p := range pkts {
			_ = p.String()
		}
	})
}

func FuzzAnalyzeTLS(f *testing.F) {
	sh := handshake(2, serverHello([32]byte{1}, ext(43, []byte{3, 4})))
	f.Add(cat(record(22, sh), record(20, []byte{1}), record(23, make([]byte, 40))))
	f.Add(cat(record(22, handshake(2, serverHello(helloRetryRandom, ext(43, []byte{3, 4})))), record(22, sh)))
	f.Add(record(22, sh[:10]))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = AnalyzeTLS(data)
	})
}
