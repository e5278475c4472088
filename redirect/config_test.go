package redirect

import (
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	cfg := Config{}.withDefaults()
	if cfg.PinPath != DefaultPinPath || cfg.Mark != DefaultMark || cfg.MarkMask != DefaultMarkMask ||
		cfg.RouteTable != DefaultRouteTable || cfg.RulePriority != DefaultRulePriority ||
		cfg.OutboundPort != 15001 || cfg.InboundPort != 15006 || cfg.HBONEPort != 15008 || cfg.Logger == nil {
		t.Fatalf("defaults: %+v", cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if got := (Config{Mark: 0x10000}).withDefaults(); got.MarkMask != 0x10000 {
		t.Fatalf("mark without mask: mask = %#x, want the mark's bits", got.MarkMask)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; empty means valid
	}{
		{"ok", Config{Uplinks: []string{"eth0", "eth1"}}, ""},
		{"relative pin path", Config{PinPath: "bpf/ambit"}, "PinPath"},
		{"mark outside mask", Config{Mark: 0x1400, MarkMask: 0xf00}, "outside MarkMask"},
		{"mask without mark", Config{MarkMask: 0xf00}, "Mark must not be 0"},
		{"main table", Config{RouteTable: 254}, "reserved table"},
		{"negative table", Config{RouteTable: -1}, "negative"},
		{"rule priority", Config{RulePriority: 40000}, "RulePriority"},
		{"same ports", Config{OutboundPort: 15006}, "must differ"},
		{"empty uplink", Config{Uplinks: []string{""}}, "uplink name"},
		{"long uplink", Config{Uplinks: []string{"abcdefghijklmnop"}}, "uplink name"},
		{"duplicate uplink", Config{Uplinks: []string{"eth0", "eth0"}}, "twice"},
		{"attach mode", Config{Attach: AttachMode(9)}, "attach mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.withDefaults().validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseAttachMode(t *testing.T) {
	for in, want := range map[string]AttachMode{"": AttachAuto, "auto": AttachAuto, "TCX": AttachTCX, "clsact": AttachClsact} {
		got, err := ParseAttachMode(in)
		if err != nil || got != want {
			t.Errorf("ParseAttachMode(%q) = %v, %v; want %v", in, got, err, want)
		}
		if in != "" && !strings.EqualFold(got.String(), in) {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), in)
		}
	}
	if _, err := ParseAttachMode("xdp"); err == nil {
		t.Error("ParseAttachMode(xdp): want error")
	}
}
