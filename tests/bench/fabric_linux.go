package main

import "github.com/ambitmesh/ambit/tests/netns"

// bareFabric is the same topology without CA or ztunnels.
func bareFabric() (*fabric, error) {
	t, err := netns.Build(netns.Options{Nodes: 2, PodsPerNode: 2})
	if err != nil {
		return nil, err
	}
	f := &fabric{topo: t, close: t.Close, ztunnelPID: func(string) int { return 0 }}
	f.podRoles()
	return f, nil
}
