package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Pin layout under Config.PinPath.
const (
	linksDir       = "links"
	mapsDir        = "maps"
	progsDir       = "progs"
	podPinPrefix   = "pod_"
	plainPinPrefix = "plain_"
	uplinkPrefix   = "uplink_"
)

// clsact filter identity (fallback mode): Teardown finds filters by name.
const (
	clsactPodName    = "ambit_capture_pod"
	clsactUplinkName = "ambit_capture_uplink"
	clsactPriority   = 1
	clsactHandle     = 0xa3b1
)

// Program names as the kernel reports them (BPF_OBJ_NAME_LEN-1 chars at most).
var ourProgNames = map[string]bool{"capture_pod": true, "capture_uplink": true}

// podPinName encodes the pod IP too, so state can be rebuilt from the pins alone. bpffs
// refuses names with dots, so the IP's dots become dashes.
func podPinName(ifindex int, ip string) string {
	return fmt.Sprintf("%s%d_%s", podPinPrefix, ifindex, strings.ReplaceAll(ip, ".", "-"))
}

// uplinkPinName maps an interface name to a pin name: bpffs refuses dots (as in VLAN
// devices "eth0.100"), and ':' never appears in interface names, so it stands in for them.
func uplinkPinName(ifname string) string {
	return uplinkPrefix + strings.ReplaceAll(ifname, ".", ":")
}

func parseUplinkPinName(name string) (ifname string, ok bool) {
	rest, ok := strings.CutPrefix(name, uplinkPrefix)
	return strings.ReplaceAll(rest, ":", "."), ok && rest != ""
}

// plainPinName names the link of a local pod outside the mesh (the uplink program).
func plainPinName(ifindex int) string { return plainPinPrefix + strconv.Itoa(ifindex) }

func parsePlainPinName(name string) (ifindex int, ok bool) {
	rest, found := strings.CutPrefix(name, plainPinPrefix)
	if !found {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n > 0
}

func parsePodPinName(name string) (ifindex int, ip string, ok bool) {
	rest, found := strings.CutPrefix(name, podPinPrefix)
	if !found {
		return 0, "", false
	}
	idx, ip, found := strings.Cut(rest, "_")
	if !found {
		return 0, "", false
	}
	n, err := strconv.Atoi(idx)
	if err != nil || n <= 0 {
		return 0, "", false
	}
	return n, strings.ReplaceAll(ip, "-", "."), true
}

// attachTCX takes over the link pinned at pin when it still targets ifindex (Update swaps
// the program atomically, so capture never lapses), else attaches a new link and pins it.
func attachTCX(ifindex int, pin string, prog *ebpf.Program) (link.Link, error) {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if tcxIfindex(l) == ifindex {
			if err := l.Update(prog); err == nil {
				return l, nil
			}
		}
		// Defunct (its device is gone) or pointing elsewhere: replace it.
		_ = l.Unpin()
		_ = l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale pin %s: %w", pin, rerr)
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    ebpf.AttachTCXIngress,
		Anchor:    link.Head(), // before a CNI's programs, which may end the chain
	})
	if err != nil {
		return nil, fmt.Errorf("attach tcx ingress to ifindex %d: %w", ifindex, err)
	}
	if err := l.Pin(pin); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return l, nil
}

func tcxIfindex(l link.Link) int {
	info, err := l.Info()
	if err != nil {
		return -1
	}
	if t := info.TCX(); t != nil {
		return int(t.Ifindex)
	}
	return -1
}

// detachPinnedLink detaches and removes a pinned link; a missing pin is fine.
func detachPinnedLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link we can load: drop the pin so it holds nothing alive.
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("remove pin %s: %w", pin, rerr)
		}
		return nil
	}
	return detachLink(l)
}

func detachLink(l link.Link) error {
	defer l.Close()
	// Detach ends the attachment even if another process still holds the link. Its errors
	// (defunct link, old kernel) do not matter: unpinning and closing the last reference
	// detaches as well.
	_ = l.Detach()
	if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin link: %w", err)
	}
	return nil
}

func clsactFilter(ifindex int, name string, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    clsactHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  clsactPriority,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}

// attachClsact installs (or atomically replaces) our direct-action filter on ifindex's
// clsact ingress hook. The filter holds the program; no pin is needed to keep it.
func attachClsact(ifindex int, name string, prog *ebpf.Program) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	if err := netlink.FilterReplace(clsactFilter(ifindex, name, prog.FD())); err != nil {
		return fmt.Errorf("add bpf filter %s to ifindex %d: %w", name, ifindex, err)
	}
	return nil
}

func detachClsact(ifindex int, name string) error {
	err := netlink.FilterDel(clsactFilter(ifindex, name, -1))
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete bpf filter %s from ifindex %d: %w", name, ifindex, err)
	}
	return nil
}

// removeForeignAttachments removes, on every device of the namespace, our clsact filters
// and (when tcx is set) our TCX programs that no pin accounts for: leftovers of a run in
// the other attach mode or of lost pins. keep lists link IDs that must stay.
func removeForeignAttachments(clsact, tcx bool, keep map[link.ID]bool) error {
	devs, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, d := range devs {
		idx := d.Attrs().Index
		if clsact {
			filters, err := netlink.FilterList(d, netlink.HANDLE_MIN_INGRESS)
			if err == nil {
				for _, f := range filters {
					bf, ok := f.(*netlink.BpfFilter)
					if !ok || (bf.Name != clsactPodName && bf.Name != clsactUplinkName) {
						continue
					}
					if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
						errs = append(errs, fmt.Errorf("delete bpf filter %s from %s: %w", bf.Name, d.Attrs().Name, err))
					}
				}
			}
		}
		if tcx {
			res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				continue
			}
			for _, ap := range res.Programs {
				id, ok := ap.LinkID()
				if !ok || keep[id] || !isOurProgram(ap.ID) {
					continue
				}
				l, err := link.NewFromID(id)
				if err != nil {
					continue // already gone
				}
				if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
					errs = append(errs, fmt.Errorf("detach tcx link %d from %s: %w", id, d.Attrs().Name, err))
				}
				_ = l.Close()
			}
		}
	}
	return errors.Join(errs...)
}

func isOurProgram(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && ourProgNames[info.Name]
}

func pinPath(root string, parts ...string) string {
	return filepath.Join(append([]string{root}, parts...)...)
}
