//go:build ignore

// TC ingress programs that steer enrolled pods' IPv4 TCP into ztunnel's transparent
// listeners in the node network namespace, and drop their IPv6 (not captured yet). See
// redirect/doc.go for the data paths.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

// Runtime settings, rewritten by the loader (CollectionSpec.Variables).
volatile const __u32 mark = 0x400;
volatile const __u32 mark_mask = 0xf00;
volatile const __u16 outbound_port = 15001;
volatile const __u16 inbound_port = 15006;
volatile const __u16 hbone_port = 15008;

// Enrolled pods: pod IPv4 (network order) -> host-side veth ifindex.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} enrolled_ips SEC(".maps");

// Host-side veth ifindex -> the only IPv4 source the pod behind it may use.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} pod_by_ifindex SEC(".maps");

#define LOOPBACK_BE bpf_htonl(0x7f000001)

// pkt holds what the programs need from the headers, as scalars (packet pointers do not
// survive helper calls).
struct pkt {
	__u32 saddr, daddr; // network order
	__u16 sport, dport; // network order
	__u8 proto;
	__u8 tcp;  // 1 when sport/dport/syn/ack are valid (unfragmented TCP, header present)
	__u8 syn, ack;
};

// parse fills p for IPv4 packets; it returns 0 for anything else (IPv6, ARP, ...).
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr iph;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &iph, sizeof(iph)))
		return 0;
	if (iph.version != 4 || iph.ihl < 5)
		return 0;
	p->saddr = iph.saddr;
	p->daddr = iph.daddr;
	p->proto = iph.protocol;
	p->tcp = 0;
	if (iph.protocol != IPPROTO_TCP || (iph.frag_off & bpf_htons(0x3fff)))
		return 1; // not TCP, or a fragment (MF or offset): no ports to look at
	struct tcphdr tcph;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + iph.ihl * 4, &tcph, sizeof(tcph)))
		return 1;
	p->sport = tcph.source;
	p->dport = tcph.dest;
	p->syn = tcph.syn;
	p->ack = tcph.ack;
	p->tcp = 1;
	return 1;
}

static __always_inline void set_mark(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~mark_mask) | mark;
}

// assign hands the packet to the node socket found for tuple t, when it is a listener
// exactly if want_listener. It returns 1 when the packet was assigned.
static __always_inline int assign(struct __sk_buff *skb, struct bpf_sock_tuple *t, int want_listener)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	if ((sk->state == BPF_TCP_LISTEN) != want_listener) {
		bpf_sk_release(sk);
		return 0;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return 0;
	set_mark(skb);
	return 1;
}

// assign_own hands the packet to the node socket that already owns its exact tuple:
// established or time-wait (a SYN reusing a TIME_WAIT tuple must go to that socket, or
// the client stalls), or a request socket mid-handshake. Listeners are ignored.
static __always_inline int assign_own(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.daddr = p->daddr;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	return assign(skb, &t, 0);
}

// assign_listener hands a new connection to ztunnel's listener on 127.0.0.1:port.
// It returns 0 when no such listener exists (ztunnel down).
static __always_inline int assign_listener(struct __sk_buff *skb, struct pkt *p, __u16 port)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.sport = p->sport;
	t.ipv4.daddr = LOOPBACK_BE;
	t.ipv4.dport = bpf_htons(port);
	return assign(skb, &t, 1);
}

static __always_inline int is_syn(struct pkt *p)
{
	return p->syn && !p->ack;
}

// Ingress of an enrolled pod's host-side veth: everything the pod sends.
SEC("tc")
int capture_pod(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return TC_ACT_SHOT; // IPv6 is not captured yet: it must not leave in clear
	if (!parse(skb, &p))
		return TC_ACT_UNSPEC; // not IP (ARP): untouched

	__u32 ifindex = skb->ifindex;
	__u32 *pod_ip = bpf_map_lookup_elem(&pod_by_ifindex, &ifindex);
	if (!pod_ip || *pod_ip != p.saddr)
		return TC_ACT_SHOT; // forged (or not yet registered) source

	if (p.proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	if (!p.tcp)
		return TC_ACT_SHOT; // fragmented or truncated TCP cannot be steered: fail closed

	if (assign_own(skb, &p))
		return TC_ACT_OK;
	if (is_syn(&p) && assign_listener(skb, &p, outbound_port))
		return TC_ACT_OK;
	return TC_ACT_SHOT; // no ztunnel socket: never let captured traffic leave in clear
}

// Ingress of the node's uplinks: traffic from other nodes, captured when it is for an
// enrolled local pod.
SEC("tc")
int capture_uplink(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (!parse(skb, &p))
		return TC_ACT_UNSPEC;
	if (p.proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	__u32 daddr = p.daddr;
	if (!bpf_map_lookup_elem(&enrolled_ips, &daddr))
		return TC_ACT_UNSPEC;
	if (!p.tcp)
		return TC_ACT_SHOT;

	if (assign_own(skb, &p))
		return TC_ACT_OK;
	if (is_syn(&p)) {
		__u16 port = p.dport == bpf_htons(hbone_port) ? hbone_port : inbound_port;
		if (assign_listener(skb, &p, port))
			return TC_ACT_OK;
	}
	return TC_ACT_SHOT;
}
