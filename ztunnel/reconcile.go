package ztunnel

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

// reconcileLoop keeps capture and certificates in line with the model: local enrolled
// pods are captured and have certificates; everything else is released.
func (z *Ztunnel) reconcileLoop(ctx context.Context) error {
	ch, cancel := z.store.Watch()
	defer cancel()
	t := time.NewTicker(z.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if z.store.Synced() {
			z.reconcile()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-t.C:
		}
	}
}

func (z *Ztunnel) reconcile() {
	snap := z.store.Load()
	z.captureMu.Lock()
	defer z.captureMu.Unlock()
	if z.capture == nil {
		return
	}
	want := map[netip.Addr]string{}
	var ids []spiffeid.ID
	seen := map[spiffeid.ID]bool{}
	var plain []netip.Addr
	for _, w := range snap.WorkloadsOnNode(z.cfg.NodeName) {
		if !w.Enrolled {
			plain = append(plain, w.IPs...)
			continue
		}
		for _, ip := range w.IPs {
			if ip.Is4() {
				want[ip] = refOf(w).String()
			}
		}
		id, err := identity.WorkloadID(z.td, w.Namespace, w.ServiceAccount)
		if err != nil {
			z.log.Warn(msgEnrollError, keyPod, refOf(w).String(), keyError, err)
			continue
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	// Certificates first, so the first connection of a newly enrolled pod need not wait.
	z.ident.SetWanted(ids)

	have := z.capture.Pods()
	for ip, pod := range want {
		ifindex, err := z.hostInterface(ip)
		if err != nil {
			z.log.Warn(msgEnrollError, keyPod, pod, keyIP, ip.String(), keyError, err)
			continue
		}
		if cur, ok := have[ip]; ok && cur == ifindex {
			continue
		}
		if err := z.capture.EnrollPod(ip, ifindex); err != nil {
			z.log.Warn(msgEnrollError, keyPod, pod, keyIP, ip.String(), keyError, err)
			continue
		}
		z.log.Info(msgEnrolled, keyPod, pod, keyIP, ip.String(), keyIfindex, ifindex)
	}
	for ip := range have {
		if _, ok := want[ip]; ok {
			continue
		}
		if err := z.capture.UnenrollPod(ip); err != nil && !errors.Is(err, context.Canceled) {
			z.log.Warn(msgEnrollError, keyIP, ip.String(), keyError, err)
			continue
		}
		z.log.Info(msgUnenrolled, keyIP, ip.String())
	}
	// Local pods outside the mesh reach enrolled pods through capture too.
	var plainVeths []int
	for _, ip := range plain {
		if !ip.Is4() {
			continue
		}
		if ifindex, err := z.hostInterface(ip); err == nil {
			plainVeths = append(plainVeths, ifindex)
		}
	}
	if err := z.capture.SetPlainPods(plainVeths); err != nil && !errors.Is(err, context.Canceled) {
		z.log.Warn(msgPlainPodsError, keyError, err)
	}
}
