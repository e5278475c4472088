package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
)

// Defaults applied by New and Teardown to zero Config fields.
const (
	DefaultPinPath      = "/sys/fs/bpf/ambit"
	DefaultMark         = 0x400
	DefaultMarkMask     = 0xf00
	DefaultRouteTable   = 133
	DefaultRulePriority = 100
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 15006
	DefaultHBONEPort    = 15008
)

var (
	// ErrUnsupported is returned on platforms without eBPF capture.
	ErrUnsupported = errors.New("redirect: eBPF capture is only supported on Linux")
	// ErrClosed is returned by Capture methods after Close.
	ErrClosed = errors.New("redirect: capture closed")
	// ErrNotDirect is returned by HostInterface when the pod IP is not reached directly
	// through a local interface (not a local pod of routed pod networking).
	ErrNotDirect = errors.New("pod IP not routed directly to a local interface")
)

// AttachMode selects how the TC programs are attached.
type AttachMode int

const (
	// AttachAuto uses TCX links when the kernel has them (>= 6.6), else clsact filters.
	AttachAuto AttachMode = iota
	// AttachTCX uses pinned TCX links.
	AttachTCX
	// AttachClsact uses a clsact qdisc and direct-action bpf filters.
	AttachClsact
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachTCX:
		return "tcx"
	case AttachClsact:
		return "clsact"
	}
	return fmt.Sprintf("AttachMode(%d)", int(m))
}

// ParseAttachMode parses "auto", "tcx" or "clsact" (for flags).
func ParseAttachMode(s string) (AttachMode, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return AttachAuto, nil
	case "tcx":
		return AttachTCX, nil
	case "clsact":
		return AttachClsact, nil
	}
	return 0, fmt.Errorf("attach mode %q: want auto, tcx or clsact", s)
}

// Config configures the capture of one node.
type Config struct {
	// PinPath is the bpffs directory for this node's pins (links/, maps/, progs/). It is
	// created; when it is not on a bpffs one is mounted: on its parent when that is a
	// sysfs directory (the usual, unmounted /sys/fs/bpf), else on PinPath itself.
	PinPath        string
	Mark, MarkMask uint32 // skb mark set on captured packets, and the bits it owns
	RouteTable     int    // table holding "local 0.0.0.0/0 dev lo"
	RulePriority   int    // priority of the "fwmark Mark/MarkMask lookup RouteTable" rule
	// Listener ports on 127.0.0.1.
	OutboundPort, InboundPort, HBONEPort uint16
	Uplinks                              []string // interfaces facing other nodes
	Attach                               AttachMode
	Logger                               *slog.Logger
}

func (cfg Config) withDefaults() Config {
	if cfg.PinPath == "" {
		cfg.PinPath = DefaultPinPath
	}
	switch {
	case cfg.Mark == 0 && cfg.MarkMask == 0:
		cfg.Mark, cfg.MarkMask = DefaultMark, DefaultMarkMask
	case cfg.MarkMask == 0:
		cfg.MarkMask = cfg.Mark // only the mark's own bits
	}
	if cfg.RouteTable == 0 {
		cfg.RouteTable = DefaultRouteTable
	}
	if cfg.RulePriority == 0 {
		cfg.RulePriority = DefaultRulePriority
	}
	if cfg.OutboundPort == 0 {
		cfg.OutboundPort = DefaultOutboundPort
	}
	if cfg.InboundPort == 0 {
		cfg.InboundPort = DefaultInboundPort
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = DefaultHBONEPort
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.PinPath = filepath.Clean(cfg.PinPath)
	return cfg
}

func (cfg Config) validate() error {
	if !filepath.IsAbs(cfg.PinPath) || cfg.PinPath == "/" {
		return fmt.Errorf("config: PinPath %q must be an absolute directory other than /", cfg.PinPath)
	}
	if cfg.Mark == 0 {
		return errors.New("config: Mark must not be 0")
	}
	if cfg.Mark&^cfg.MarkMask != 0 {
		return fmt.Errorf("config: Mark %#x has bits outside MarkMask %#x", cfg.Mark, cfg.MarkMask)
	}
	switch {
	case cfg.RouteTable < 0:
		return fmt.Errorf("config: RouteTable %d is negative", cfg.RouteTable)
	case cfg.RouteTable >= 253 && cfg.RouteTable <= 255:
		return fmt.Errorf("config: RouteTable %d is a reserved table (default/main/local)", cfg.RouteTable)
	}
	if cfg.RulePriority < 1 || cfg.RulePriority > 32765 {
		return fmt.Errorf("config: RulePriority %d out of range 1..32765", cfg.RulePriority)
	}
	ports := []uint16{cfg.OutboundPort, cfg.InboundPort, cfg.HBONEPort}
	if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
		return fmt.Errorf("config: listener ports %d/%d/%d must differ", ports[0], ports[1], ports[2])
	}
	seen := map[string]bool{}
	for _, u := range cfg.Uplinks {
		if u == "" || len(u) > 15 || strings.ContainsAny(u, "/ \t\n") {
			return fmt.Errorf("config: uplink name %q is not a valid interface name", u)
		}
		if seen[u] {
			return fmt.Errorf("config: uplink %q listed twice", u)
		}
		seen[u] = true
	}
	switch cfg.Attach {
	case AttachAuto, AttachTCX, AttachClsact:
	default:
		return fmt.Errorf("config: unknown attach mode %d", int(cfg.Attach))
	}
	return nil
}
