package redirect

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func captureRule(cfg Config) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Priority = cfg.RulePriority
	r.Mark = cfg.Mark
	mask := cfg.MarkMask
	r.Mask = &mask
	r.Table = cfg.RouteTable
	return r
}

func captureRoute(cfg Config) (*netlink.Route, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	return &netlink.Route{
		Family:    unix.AF_INET,
		LinkIndex: lo.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Table:     cfg.RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}, nil
}

// installRouting makes marked (assigned) packets be delivered locally: sk_assign picks the
// socket, but routing still runs after TC and would forward them otherwise.
func installRouting(cfg Config) error {
	rt, err := captureRoute(cfg)
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(rt); err != nil {
		return fmt.Errorf("add route local 0.0.0.0/0 dev lo table %d: %w", cfg.RouteTable, err)
	}
	if err := netlink.RuleAdd(captureRule(cfg)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add rule fwmark %#x/%#x lookup %d: %w", cfg.Mark, cfg.MarkMask, cfg.RouteTable, err)
	}
	return nil
}

func removeRouting(cfg Config) error {
	var errs []error
	for {
		err := netlink.RuleDel(captureRule(cfg))
		if err == nil {
			continue // a duplicate could exist if added by hand without NLM_F_EXCL
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete rule fwmark %#x/%#x lookup %d: %w", cfg.Mark, cfg.MarkMask, cfg.RouteTable, err))
		}
		break
	}
	rt, err := captureRoute(cfg)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := netlink.RouteDel(rt); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("delete route local 0.0.0.0/0 table %d: %w", cfg.RouteTable, err))
	}
	return errors.Join(errs...)
}
