// Package redirect captures the TCP traffic of enrolled pods into ztunnel with eBPF.
//
// ztunnel runs in the node network namespace with three IP_TRANSPARENT listeners on
// 127.0.0.1 (outbound :15001, inbound plaintext :15006, inbound HBONE :15008). Two TC
// ingress programs (capture.c) steer packets to them with bpf_sk_assign:
//
//   - capture_pod, on the host-side veth of each enrolled pod (what the pod sends): the
//     source must be the pod's registered IP; packets of a socket the node already owns
//     (ztunnel's accepted or transparent connections, TIME_WAIT included) go to that socket;
//     a new SYN goes to the outbound listener; everything else TCP is dropped, so nothing
//     captured ever leaves in clear while ztunnel is down.
//   - capture_uplink, on the node's uplinks: TCP for an enrolled local pod is steered the
//     same way, new SYNs to the HBONE listener (destination port 15008) or the inbound
//     plaintext listener (any other port).
//
// Assigned packets are marked; a policy-routing rule sends marked packets to a table whose
// only route is "local 0.0.0.0/0 dev lo", so routing delivers them locally to the socket.
//
// Links, programs and maps are pinned under Config.PinPath so capture survives a ztunnel
// restart (and keeps failing closed while it is down); New takes the pins over atomically.
// IPv6 is not captured yet: an enrolled pod's IPv6 is dropped at its veth (fail closed),
// while pods outside the mesh keep it.
package redirect

// Regenerate the committed eBPF objects (needs clang; `make generate`). The -I directory
// supplies <asm/types.h> on Debian/Ubuntu (amd64).
//go:generate go tool bpf2go -target bpfel -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" capture capture.c -- -I/usr/include/x86_64-linux-gnu
