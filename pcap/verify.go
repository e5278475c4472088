package pcap

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
)

// WireVerdict summarises a capture of the wire between nodes.
type WireVerdict struct {
	Packets       int
	TCPPackets    int
	NotHBONE      []string       // TCP flows between nodes that are not to or from port 15008
	MarkerVisible bool           // the plaintext marker appeared in some payload
	TLSVersions   map[string]int // negotiated versions of handshakes seen in the capture
	Midstream     int            // server streams whose handshake happened before the capture began
	Flows         int
}

// Encrypted reports whether the capture proves that node-to-node traffic is HBONE over
// TLS 1.3 only, with the marker nowhere in clear.
func (v WireVerdict) Encrypted() bool {
	return v.TCPPackets > 0 && len(v.NotHBONE) == 0 && !v.MarkerVisible &&
		v.TLSVersions["TLS 1.3"] > 0 && len(v.TLSVersions) == 1 && v.Midstream == 0
}

func (v WireVerdict) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d packets (%d TCP) in %d flows; ", v.Packets, v.TCPPackets, v.Flows)
	if len(v.NotHBONE) == 0 {
		b.WriteString("all TCP to/from :15008; ")
	} else {
		fmt.Fprintf(&b, "non-HBONE flows: %s; ", strings.Join(v.NotHBONE, ", "))
	}
	fmt.Fprintf(&b, "handshakes: %v; ", v.TLSVersions)
	if v.MarkerVisible {
		b.WriteString("MARKER VISIBLE IN CLEAR")
	} else {
		b.WriteString("marker not visible")
	}
	return b.String()
}

// VerifyWire reads a capture taken on the wire between nodes and checks it for marker, ports and TLS.
func VerifyWire(file string, marker []byte) (WireVerdict, error) {
	pkts, err := ReadFile(file)
	if err != nil {
		return WireVerdict{}, err
	}
	v := WireVerdict{Packets: len(pkts), TLSVersions: map[string]int{}}
	seen := map[string]bool{}
	for _, p := range pkts {
		if p.Proto != 6 {
			continue
		}
		v.TCPPackets++
		if p.Src.Port() != 15008 && p.Dst.Port() != 15008 {
			k := flowKey(p.Src, p.Dst)
			if !seen[k] {
				seen[k] = true
				v.NotHBONE = append(v.NotHBONE, k)
			}
		}
	}
	v.MarkerVisible = ContainsPlaintext(pkts, marker)
	streams := TCPStreams(pkts)
	v.Flows = len(streams)
	for f, data := range streams {
		if f.Src.Port() != 15008 || len(data) == 0 {
			continue // only server-to-client streams carry the ServerHello
		}
		ver, err := NegotiatedTLSVersion(data)
		if err != nil {
			v.Midstream++
			continue
		}
		v.TLSVersions[tls.VersionName(ver)]++
	}
	return v, nil
}

func flowKey(a, b netip.AddrPort) string { return a.String() + "->" + b.String() }
