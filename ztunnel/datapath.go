package ztunnel

import (
	"fmt"

	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/redirect"
)

// DataPath picks the implementation of the data path's hand-made fast paths. Both
// speak the same protocol with the same behaviour; the standard one is there to compare
// against and to fall back to while a problem in a fast path is investigated.
type DataPath uint8

const (
	// DataPathFast is hbone's own TLS record layer and redirect's raw socket stack
	// (docs/performance.md says what each buys).
	DataPathFast DataPath = iota
	// DataPathStd is crypto/tls's tls.Conn for whole HBONE connections and sockets from
	// the net package (net.ListenConfig, net.Dialer with Control).
	DataPathStd
)

func (d DataPath) String() string {
	switch d {
	case DataPathFast:
		return "fast"
	case DataPathStd:
		return "std"
	}
	return fmt.Sprintf("DataPath(%d)", uint8(d))
}

// MarshalText and UnmarshalText make a DataPath a flag value (flag.TextVar).
func (d DataPath) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *DataPath) UnmarshalText(b []byte) error {
	switch string(b) {
	case "fast":
		*d = DataPathFast
	case "std":
		*d = DataPathStd
	default:
		return fmt.Errorf("data path %q: want fast or std", b)
	}
	return nil
}

func (d DataPath) valid() bool { return d <= DataPathStd }

// sockets is the socket stack of d.
func (d DataPath) sockets() redirect.SocketStack {
	if d == DataPathStd {
		return redirect.SocketsStd
	}
	return redirect.SocketsRaw
}

// records is hbone's record layer of d.
func (d DataPath) records() hbone.RecordLayer {
	if d == DataPathStd {
		return hbone.RecordsCryptoTLS
	}
	return hbone.RecordsOwn
}
