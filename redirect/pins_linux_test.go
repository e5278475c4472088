package redirect

import (
	"strings"
	"testing"
)

func TestPodPinName(t *testing.T) {
	name := podPinName(42, "198.18.1.10")
	if strings.Contains(name, ".") {
		t.Fatalf("pin name %q contains a dot (bpffs refuses it)", name)
	}
	idx, ip, ok := parsePodPinName(name)
	if !ok || idx != 42 || ip != "198.18.1.10" {
		t.Fatalf("parse(%q) = %d, %q, %v", name, idx, ip, ok)
	}
	for _, bad := range []string{"uplink_eth0", "pod_x_1.2.3.4", "pod_7", "pod_0_1.2.3.4", "pod_-1_1.2.3.4"} {
		if _, _, ok := parsePodPinName(bad); ok {
			t.Errorf("parse(%q): want not ok", bad)
		}
	}
}

func TestUplinkPinName(t *testing.T) {
	for _, name := range []string{"eth0", "eth0.100", "bond-0_a.1"} {
		pin := uplinkPinName(name)
		if strings.Contains(pin, ".") {
			t.Errorf("pin name %q contains a dot (bpffs refuses it)", pin)
		}
		if got, ok := parseUplinkPinName(pin); !ok || got != name {
			t.Errorf("round trip %q -> %q -> %q, %v", name, pin, got, ok)
		}
	}
	if _, ok := parseUplinkPinName("pod_3_1-2-3-4"); ok {
		t.Error("pod pin parsed as uplink")
	}
}
