package pcap

import (
	"bytes"
	"net/netip"
	"sort"
)

// Flow is one direction of a TCP connection.
type Flow struct {
	Src, Dst netip.AddrPort
}

// Reverse is the other direction of the same connection.
func (f Flow) Reverse() Flow { return Flow{Src: f.Dst, Dst: f.Src} }

func (f Flow) String() string { return f.Src.String() + " > " + f.Dst.String() }

// FlowOf is the flow a packet belongs to.
func FlowOf(p Packet) Flow { return Flow{Src: p.Src, Dst: p.Dst} }

type segment struct {
	seq  uint32
	data []byte
}

// TCPStreams reassembles the TCP payload of every flow (direction) by sequence number:
// duplicates (retransmissions, or the same packet captured on two interfaces with
// `tcpdump -i any`) and overlaps are dropped, reordering is undone, and a gap (a segment
// missing from the capture) is skipped over. A SYN with a new initial sequence number
// starts a new connection on the tuple: the earlier data is dropped. Flows without payload
// are absent.
func TCPStreams(pkts []Packet) map[Flow][]byte {
	type state struct {
		isn    uint32
		hasISN bool
		segs   []segment
	}
	flows := map[Flow]*state{}
	for _, p := range pkts {
		if p.Proto != ProtoTCP || p.Fragment {
			continue
		}
		f := FlowOf(p)
		st := flows[f]
		if st == nil {
			st = &state{}
			flows[f] = st
		}
		if p.Flags&SYN != 0 {
			if !st.hasISN || p.Seq != st.isn {
				if st.hasISN {
					st.segs = st.segs[:0] // a new connection reusing the tuple
				}
				st.isn, st.hasISN = p.Seq, true
			}
			continue
		}
		if len(p.Payload) > 0 {
			st.segs = append(st.segs, segment{seq: p.Seq, data: p.Payload})
		}
	}
	out := make(map[Flow][]byte, len(flows))
	for f, st := range flows {
		if len(st.segs) == 0 {
			continue
		}
		base := st.segs[0].seq
		if st.hasISN {
			base = st.isn + 1
		}
		// Signed 32-bit distance handles wrap-around and segments before the first seen.
		off := func(s segment) int64 { return int64(int32(s.seq - base)) }
		sort.SliceStable(st.segs, func(i, j int) bool { return off(st.segs[i]) < off(st.segs[j]) })
		var buf bytes.Buffer
		next := off(st.segs[0])
		if st.hasISN && next < 0 {
			next = 0
		}
		for _, s := range st.segs {
			o, end := off(s), off(s)+int64(len(s.data))
			if end <= next {
				continue // duplicate or retransmission
			}
			if o < next {
				s.data = s.data[next-o:]
			}
			buf.Write(s.data)
			next = end
		}
		out[f] = buf.Bytes()
	}
	return out
}

// ContainsPlaintext reports whether marker appears in any packet's payload or in any
// reassembled TCP stream (which finds a marker split across segments).
func ContainsPlaintext(pkts []Packet, marker []byte) bool {
	if len(marker) == 0 {
		return true
	}
	for _, p := range pkts {
		if bytes.Contains(p.Payload, marker) {
			return true
		}
	}
	for _, s := range TCPStreams(pkts) {
		if bytes.Contains(s, marker) {
			return true
		}
	}
	return false
}

// Filter returns the packets for which keep is true.
func Filter(pkts []Packet, keep func(Packet) bool) []Packet {
	var out []Packet
	for _, p := range pkts {
		if keep(p) {
			out = append(out, p)
		}
	}
	return out
}

// Involving keeps packets to or from addr (any port), for slicing a capture per host.
func Involving(addr netip.Addr) func(Packet) bool {
	return func(p Packet) bool { return p.Src.Addr() == addr || p.Dst.Addr() == addr }
}

// Port keeps TCP/UDP packets to or from port.
func Port(port uint16) func(Packet) bool {
	return func(p Packet) bool { return p.Src.Port() == port || p.Dst.Port() == port }
}

// Connections lists the TCP connections (client -> server direction) that began with a SYN
// in the capture, in order of appearance.
func Connections(pkts []Packet) []Flow {
	var out []Flow
	seen := map[Flow]bool{}
	for _, p := range pkts {
		if p.Proto == ProtoTCP && p.Flags&(SYN|ACK) == SYN {
			f := FlowOf(p)
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	return out
}
