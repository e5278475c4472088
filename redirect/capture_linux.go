package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// Capture is the loaded capture of one node. Its methods act on the network namespace New
// was called in, whatever thread calls them.
type Capture struct {
	cfg Config
	log *slog.Logger
	ns  *netnsRef

	mu       sync.Mutex
	objs     captureObjects
	mode     AttachMode           // AttachTCX or AttachClsact once resolved
	uplinks  map[string]link.Link // by name; nil values in clsact mode
	podLinks map[int]link.Link    // by host ifindex; TCX mode only
	pods     map[netip.Addr]int   // enrolled pod IP -> host ifindex
	// plain holds the host veths of local pods outside the mesh (see SetPlainPods), by
	// ifindex; nil values in clsact mode.
	plain    map[int]link.Link
	attached bool
	closed   bool
}

// New loads the programs, takes over the pins of a previous run (links are updated in
// place, so capture never lapses), attaches the uplink program, installs the policy
// routing and pins everything. It acts on the calling thread's network namespace.
func New(cfg Config) (*Capture, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := currentNetns()
	if err != nil {
		return nil, err
	}
	c := &Capture{
		cfg:      cfg,
		log:      cfg.Logger,
		ns:       ns,
		mode:     cfg.Attach,
		uplinks:  map[string]link.Link{},
		podLinks: map[int]link.Link{},
		pods:     map[netip.Addr]int{},
		plain:    map[int]link.Link{},
	}
	if err := c.start(); err != nil {
		c.releaseHandles()
		return nil, err
	}
	return c, nil
}

func (c *Capture) pin(parts ...string) string { return pinPath(c.cfg.PinPath, parts...) }

func (c *Capture) start() error {
	cfg := c.cfg
	if err := ensureBPFFS(cfg.PinPath); err != nil {
		return err
	}
	for _, d := range []string{linksDir, mapsDir, progsDir} {
		if err := os.Mkdir(c.pin(d), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create pin directory: %w", err)
		}
	}

	spec, err := loadCapture()
	if err != nil {
		return fmt.Errorf("load capture spec: %w", err)
	}
	for name, v := range map[string]any{
		"mark":          cfg.Mark,
		"mark_mask":     cfg.MarkMask,
		"outbound_port": cfg.OutboundPort,
		"inbound_port":  cfg.InboundPort,
		"hbone_port":    cfg.HBONEPort,
	} {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("capture spec: variable %s missing", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}

	// Reuse the pinned maps so enrollment survives restarts and old and new programs
	// share state during the switch-over.
	repl := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range repl {
			m.Close()
		}
	}()
	for _, name := range []string{captureMapEnrolledIps, captureMapPodByIfindex} {
		p := c.pin(mapsDir, name)
		m, err := ebpf.LoadPinnedMap(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			if cerr := spec.Maps[name].Compatible(m); cerr == nil {
				repl[name] = m
				continue
			} else {
				c.log.Warn("pinned map incompatible, recreating", "map", name, "error", cerr)
			}
			m.Close()
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale map pin %s: %w", p, err)
		}
	}
	if err := spec.LoadAndAssign(&c.objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return fmt.Errorf("load capture programs: %w", err)
	}
	for name, m := range map[string]*ebpf.Map{captureMapEnrolledIps: c.objs.EnrolledIps, captureMapPodByIfindex: c.objs.PodByIfindex} {
		if _, ok := repl[name]; ok {
			continue
		}
		if err := m.Pin(c.pin(mapsDir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for name, p := range map[string]*ebpf.Program{captureProgCapturePod: c.objs.CapturePod, captureProgCaptureUplink: c.objs.CaptureUplink} {
		path := c.pin(progsDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old program pin %s: %w", path, err)
		}
		if err := p.Pin(path); err != nil {
			return fmt.Errorf("pin program %s: %w", name, err)
		}
	}

	if err := installRouting(cfg); err != nil {
		return err
	}

	// Pods from the previous run: the maps and the pinned pod links.
	prev, err := c.recoverPods()
	if err != nil {
		return err
	}
	if c.mode == AttachAuto && len(prev.pinned) > 0 {
		c.mode = AttachTCX // keep the mode the pins were made in
	}

	for _, name := range cfg.Uplinks {
		if err := c.attachUplink(name); err != nil {
			return err
		}
	}
	if err := c.removeStaleUplinks(); err != nil {
		return err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for ip, ifindex := range prev.pods {
		if !podStillThere(ip, ifindex) {
			// Deleted while we were down (its ifindex may even be reused by now).
			c.log.Info("dropping enrollment of vanished pod", "pod_ip", ip, "ifindex", ifindex)
			if err := detachPinnedLink(c.pin(linksDir, podPinName(ifindex, ip.String()))); err != nil {
				return fmt.Errorf("drop vanished pod %s: %w", ip, err)
			}
			c.forgetPod(ip, ifindex)
			continue
		}
		if err := c.enrollLocked(ip, ifindex); err != nil {
			return fmt.Errorf("re-enroll pod %s: %w", ip, err)
		}
	}
	if c.mode != AttachClsact {
		if err := c.recoverPlainLocked(); err != nil {
			return err
		}
	}
	// Stale entries whose IP is no longer enrolled, then attachments of the other mode.
	c.pruneMaps()
	if c.mode == AttachClsact {
		// Filters hold the programs now; TCX links pinned by an earlier run must go.
		ents, err := os.ReadDir(c.pin(linksDir))
		if err != nil {
			return fmt.Errorf("read link pins: %w", err)
		}
		for _, e := range ents {
			if err := detachPinnedLink(c.pin(linksDir, e.Name())); err != nil {
				return fmt.Errorf("detach tcx link of previous run: %w", err)
			}
		}
	}
	keep := map[link.ID]bool{}
	for _, l := range c.allLinks() {
		if info, err := l.Info(); err == nil {
			keep[info.ID] = true
		}
	}
	if err := removeForeignAttachments(c.mode != AttachClsact, true, keep); err != nil {
		c.log.Warn("removing stale attachments", "error", err)
	}
	c.attached = true
	c.log.Info("capture attached", "mode", c.modeName(), "uplinks", strings.Join(cfg.Uplinks, ","), "pods", len(c.pods), "pin_path", cfg.PinPath)
	return nil
}

// podStillThere reports whether the device ifindex still exists and, where the pod IP is
// routed directly to some device (routed pod networking), that this is the one.
func podStillThere(ip netip.Addr, ifindex int) bool {
	if _, err := netlink.LinkByIndex(ifindex); err != nil {
		return false
	}
	if idx, err := HostInterface(ip); err == nil && idx != ifindex {
		return false
	}
	return true
}

func (c *Capture) modeName() string {
	if c.mode == AttachAuto {
		return "unresolved"
	}
	return c.mode.String()
}

func (c *Capture) allLinks() []link.Link {
	var ls []link.Link
	for _, l := range c.uplinks {
		if l != nil {
			ls = append(ls, l)
		}
	}
	for _, l := range c.podLinks {
		ls = append(ls, l)
	}
	for _, l := range c.plain {
		if l != nil {
			ls = append(ls, l)
		}
	}
	return ls
}

type recovered struct {
	pods   map[netip.Addr]int
	pinned map[int]string // ifindex -> link pin path
}

func (c *Capture) recoverPods() (recovered, error) {
	r := recovered{pods: map[netip.Addr]int{}, pinned: map[int]string{}}
	var key [4]byte
	var ifindex uint32
	it := c.objs.EnrolledIps.Iterate()
	for it.Next(&key, &ifindex) {
		r.pods[netip.AddrFrom4(key)] = int(ifindex)
	}
	if err := it.Err(); err != nil {
		return r, fmt.Errorf("read enrolled pods map: %w", err)
	}
	ents, err := os.ReadDir(c.pin(linksDir))
	if err != nil {
		return r, fmt.Errorf("read link pins: %w", err)
	}
	for _, e := range ents {
		idx, ipStr, ok := parsePodPinName(e.Name())
		if !ok {
			continue
		}
		ip, err := netip.ParseAddr(ipStr)
		if err != nil || !ip.Is4() {
			c.log.Warn("ignoring unknown pin", "pin", e.Name())
			continue
		}
		r.pinned[idx] = c.pin(linksDir, e.Name())
		if _, ok := r.pods[ip]; !ok {
			r.pods[ip] = idx
		}
	}
	// Pins not matching the final pod set (an IP now enrolled on another veth) go away.
	for _, e := range ents {
		idx, ipStr, ok := parsePodPinName(e.Name())
		if !ok {
			continue
		}
		if ip, err := netip.ParseAddr(ipStr); err == nil && r.pods[ip] == idx {
			continue
		}
		if err := detachPinnedLink(c.pin(linksDir, e.Name())); err != nil {
			c.log.Warn("removing stale pod link", "pin", e.Name(), "error", err)
		}
		delete(r.pinned, idx)
	}
	return r, nil
}

// pruneMaps deletes map entries that do not belong to an enrolled pod.
func (c *Capture) pruneMaps() {
	var key [4]byte
	var ifindex uint32
	var stale [][4]byte
	it := c.objs.EnrolledIps.Iterate()
	for it.Next(&key, &ifindex) {
		if c.pods[netip.AddrFrom4(key)] != int(ifindex) {
			stale = append(stale, key)
		}
	}
	for _, k := range stale {
		_ = c.objs.EnrolledIps.Delete(k)
	}
	var idx uint32
	var ip [4]byte
	var staleIdx []uint32
	it = c.objs.PodByIfindex.Iterate()
	for it.Next(&idx, &ip) {
		if c.pods[netip.AddrFrom4(ip)] != int(idx) {
			staleIdx = append(staleIdx, idx)
		}
	}
	for _, k := range staleIdx {
		_ = c.objs.PodByIfindex.Delete(k)
	}
}

// attachDevice attaches prog to ifindex's ingress in the configured mode, resolving
// AttachAuto on first use. It returns the link in TCX mode, nil in clsact mode.
func (c *Capture) attachDevice(ifindex int, pin, filterName string, prog *ebpf.Program) (link.Link, error) {
	switch c.mode {
	case AttachClsact:
		return nil, attachClsact(ifindex, filterName, prog)
	case AttachTCX:
		return attachTCX(ifindex, pin, prog)
	}
	l, err := attachTCX(ifindex, pin, prog)
	if errors.Is(err, ebpf.ErrNotSupported) {
		c.log.Info("tcx not supported, falling back to clsact")
		c.mode = AttachClsact
		return nil, attachClsact(ifindex, filterName, prog)
	}
	if err == nil {
		c.mode = AttachTCX
	}
	return l, err
}

func (c *Capture) attachUplink(name string) error {
	dev, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find uplink %s: %w", name, err)
	}
	l, err := c.attachDevice(dev.Attrs().Index, c.pin(linksDir, uplinkPinName(name)), clsactUplinkName, c.objs.CaptureUplink)
	if err != nil {
		return fmt.Errorf("attach uplink %s: %w", name, err)
	}
	c.uplinks[name] = l
	return nil
}

// removeStaleUplinks detaches uplinks pinned by a previous run that are no longer configured.
func (c *Capture) removeStaleUplinks() error {
	ents, err := os.ReadDir(c.pin(linksDir))
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	for _, e := range ents {
		name, ok := parseUplinkPinName(e.Name())
		if !ok {
			continue
		}
		if _, want := c.uplinks[name]; want && c.mode == AttachTCX {
			continue
		}
		if err := detachPinnedLink(c.pin(linksDir, e.Name())); err != nil {
			return fmt.Errorf("detach stale uplink %s: %w", name, err)
		}
		c.log.Info("detached stale uplink", "uplink", name)
	}
	return nil
}

func podIPv4(ip netip.Addr) (netip.Addr, error) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("pod IP %s: only IPv4 pods can be captured", ip)
	}
	if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("pod IP %s is not a unicast address", ip)
	}
	return ip, nil
}

// EnrollPod starts capturing the pod with podIP behind the host-side veth hostIfindex.
// It is idempotent; enrolling an IP on another veth moves it.
func (c *Capture) EnrollPod(podIP netip.Addr, hostIfindex int) error {
	ip, err := podIPv4(podIP)
	if err != nil {
		return err
	}
	if hostIfindex <= 0 {
		return fmt.Errorf("enroll pod %s: invalid host ifindex %d", ip, hostIfindex)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return c.ns.do(func() error { return c.enrollLocked(ip, hostIfindex) })
}

func (c *Capture) enrollLocked(ip netip.Addr, ifindex int) error {
	if old, ok := c.pods[ip]; ok && old != ifindex {
		if err := c.unenrollLocked(ip); err != nil {
			return err
		}
	}
	for other, idx := range c.pods {
		if idx == ifindex && other != ip {
			// The veth now has another IP: drop the old registration first.
			if err := c.unenrollLocked(other); err != nil {
				return err
			}
		}
	}
	// Maps first: until the program knows the pod's IP it drops everything from the veth.
	key := ip.As4()
	if err := c.objs.PodByIfindex.Put(uint32(ifindex), key); err != nil {
		return fmt.Errorf("enroll pod %s: update ifindex map: %w", ip, err)
	}
	if err := c.objs.EnrolledIps.Put(key, uint32(ifindex)); err != nil {
		c.forgetPod(ip, ifindex)
		return fmt.Errorf("enroll pod %s: update pod map: %w", ip, err)
	}
	if _, ok := c.podLinks[ifindex]; ok {
		c.pods[ip] = ifindex
		return nil
	}
	// A pod that joins the mesh leaves the plain set: in clsact mode the pod filter below
	// replaces the plain one (same handle and priority); a TCX plain link goes after it.
	defer c.dropPlainLocked(ifindex, false)
	l, err := c.attachDevice(ifindex, c.pin(linksDir, podPinName(ifindex, ip.String())), clsactPodName, c.objs.CapturePod)
	if err != nil {
		c.forgetPod(ip, ifindex)
		return fmt.Errorf("enroll pod %s: %w", ip, err)
	}
	if l != nil {
		c.podLinks[ifindex] = l
	}
	c.pods[ip] = ifindex
	c.log.Debug("pod enrolled", "pod_ip", ip, "ifindex", ifindex)
	return nil
}

// forgetPod deletes the map entries of a pod.
func (c *Capture) forgetPod(ip netip.Addr, ifindex int) {
	key := ip.As4()
	_ = c.objs.EnrolledIps.Delete(key)
	var cur [4]byte
	if err := c.objs.PodByIfindex.Lookup(uint32(ifindex), &cur); err == nil && cur == key {
		_ = c.objs.PodByIfindex.Delete(uint32(ifindex))
	}
	delete(c.pods, ip)
}

// UnenrollPod stops capturing podIP: it detaches the pod program and forgets the pod.
// Unknown pods are fine (idempotent).
func (c *Capture) UnenrollPod(podIP netip.Addr) error {
	ip, err := podIPv4(podIP)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return c.ns.do(func() error { return c.unenrollLocked(ip) })
}

func (c *Capture) unenrollLocked(ip netip.Addr) error {
	ifindex, ok := c.pods[ip]
	if !ok {
		var idx uint32
		if err := c.objs.EnrolledIps.Lookup(ip.As4(), &idx); err != nil {
			return nil
		}
		ifindex = int(idx)
	}
	// Detach before forgetting: without its map entry the program would drop the pod's traffic.
	if l, ok := c.podLinks[ifindex]; ok {
		if err := detachLink(l); err != nil {
			return fmt.Errorf("unenroll pod %s: %w", ip, err)
		}
		delete(c.podLinks, ifindex)
	} else if err := detachPinnedLink(c.pin(linksDir, podPinName(ifindex, ip.String()))); err != nil {
		return fmt.Errorf("unenroll pod %s: %w", ip, err)
	}
	if c.mode == AttachClsact {
		if err := detachClsact(ifindex, clsactPodName); err != nil {
			return fmt.Errorf("unenroll pod %s: %w", ip, err)
		}
	}
	c.forgetPod(ip, ifindex)
	c.log.Debug("pod unenrolled", "pod_ip", ip, "ifindex", ifindex)
	return nil
}

// SetPlainPods makes the host veths in ifindexes (those of the node's pods outside the
// mesh) the exact set that carries the uplink program: a connection such a pod opens to
// an enrolled pod of this node is captured as one from another node would be (:15006, or
// :15008 for HBONE), so policy applies and the enrolled pod's replies have a socket to
// reach. Veths of enrolled pods are skipped. It is idempotent.
func (c *Capture) SetPlainPods(ifindexes []int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return c.ns.do(func() error {
		enrolled := map[int]bool{}
		for _, idx := range c.pods {
			enrolled[idx] = true
		}
		want := map[int]bool{}
		var errs []error
		for _, idx := range ifindexes {
			if idx <= 0 || enrolled[idx] || c.isUplink(idx) {
				continue
			}
			want[idx] = true
			if _, ok := c.plain[idx]; ok {
				continue
			}
			l, err := c.attachDevice(idx, c.pin(linksDir, plainPinName(idx)), clsactUplinkName, c.objs.CaptureUplink)
			if err != nil {
				errs = append(errs, fmt.Errorf("capture plain pod veth %d: %w", idx, err))
				continue
			}
			c.plain[idx] = l
		}
		for idx := range c.plain {
			if !want[idx] {
				if err := c.dropPlainLocked(idx, !enrolled[idx]); err != nil {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	})
}

// PlainPods returns the host ifindexes SetPlainPods has attached.
func (c *Capture) PlainPods() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.plain))
	for idx := range c.plain {
		out = append(out, idx)
	}
	slices.Sort(out)
	return out
}

// dropPlainLocked detaches the plain program from ifindex; filter says whether a clsact
// filter there is the plain one (not when the pod program has replaced it).
func (c *Capture) dropPlainLocked(ifindex int, filter bool) error {
	l, ok := c.plain[ifindex]
	if !ok {
		return nil
	}
	delete(c.plain, ifindex)
	switch {
	case l != nil:
		if err := detachLink(l); err != nil {
			return fmt.Errorf("release plain pod veth %d: %w", ifindex, err)
		}
	case filter:
		if err := detachClsact(ifindex, clsactUplinkName); err != nil {
			return fmt.Errorf("release plain pod veth %d: %w", ifindex, err)
		}
	}
	return nil
}

func (c *Capture) isUplink(ifindex int) bool {
	for name := range c.uplinks {
		if dev, err := netlink.LinkByName(name); err == nil && dev.Attrs().Index == ifindex {
			return true
		}
	}
	return false
}

// recoverPlainLocked takes over the plain pod links pinned by a previous run (updated
// in place, so those pods' connections to enrolled pods stay captured); pins of devices
// that are gone or now enrolled are removed.
func (c *Capture) recoverPlainLocked() error {
	ents, err := os.ReadDir(c.pin(linksDir))
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	enrolled := map[int]bool{}
	for _, idx := range c.pods {
		enrolled[idx] = true
	}
	for _, e := range ents {
		idx, ok := parsePlainPinName(e.Name())
		if !ok {
			continue
		}
		pin := c.pin(linksDir, e.Name())
		if _, err := netlink.LinkByIndex(idx); err != nil || enrolled[idx] {
			if err := detachPinnedLink(pin); err != nil {
				return fmt.Errorf("drop plain pod link %d: %w", idx, err)
			}
			continue
		}
		l, err := attachTCX(idx, pin, c.objs.CaptureUplink)
		if err != nil {
			return fmt.Errorf("take over plain pod link %d: %w", idx, err)
		}
		c.plain[idx] = l
	}
	return nil
}

// Pods returns the enrolled pods (pod IP -> host ifindex), including those taken over
// from a previous run, so the caller can reconcile.
func (c *Capture) Pods() map[netip.Addr]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[netip.Addr]int, len(c.pods))
	for ip, idx := range c.pods {
		out[ip] = idx
	}
	return out
}

// Attached reports whether the capture is loaded and attached to the uplinks (readiness).
func (c *Capture) Attached() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attached && !c.closed
}

// Mode returns the attach mode in use (AttachAuto until the first attachment resolved it).
func (c *Capture) Mode() AttachMode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mode
}

// Close releases the in-process handles. Pinned links, filters and maps stay, so capture
// remains in force (and fails closed) while ztunnel is down. It is idempotent.
func (c *Capture) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.releaseHandles()
	return nil
}

func (c *Capture) releaseHandles() {
	for _, l := range c.allLinks() {
		_ = l.Close()
	}
	c.uplinks, c.podLinks, c.plain = map[string]link.Link{}, map[int]link.Link{}, map[int]link.Link{}
	_ = c.objs.Close()
	c.ns.close()
}

// Teardown removes everything this package made in the current network namespace for
// cfg: links and clsact filters, pins and maps under PinPath (and a bpffs mounted on
// PinPath), the rule and the route. It is idempotent and works after a crash. One
// capture per network namespace is assumed: capture programs attached to its devices that
// no pin accounts for are removed too.
func Teardown(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var errs []error
	linkDir := pinPath(cfg.PinPath, linksDir)
	if ents, err := os.ReadDir(linkDir); err == nil {
		for _, e := range ents {
			if err := detachPinnedLink(pinPath(linkDir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := removeForeignAttachments(true, true, nil); err != nil {
		errs = append(errs, err)
	}
	for _, d := range []string{mapsDir, progsDir} {
		dir := pinPath(cfg.PinPath, d)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if err := os.Remove(pinPath(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove pin: %w", err))
			}
		}
	}
	for _, d := range []string{linksDir, mapsDir, progsDir} {
		if err := os.Remove(pinPath(cfg.PinPath, d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
		}
	}
	if isBPFFSMountRoot(cfg.PinPath) {
		if ents, err := os.ReadDir(cfg.PinPath); err == nil && onlyPreloaded(ents) {
			if err := unmount(cfg.PinPath); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if onBPFFS(cfg.PinPath) && !isBPFFSMountRoot(cfg.PinPath) {
		if err := os.Remove(cfg.PinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin directory %s: %w", cfg.PinPath, err))
		}
	}
	if err := removeRouting(cfg); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
