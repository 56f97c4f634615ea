// SPDX-License-Identifier: Apache-2.0
/*
 * labkit's eBPF service datapath (kube-proxy replacement, Cilium style).
 *
 *   client --c0==n0--> [ lb_from_client ]  DNAT VIP:port -> backend, CT
 *                          node ns                  | bpf_redirect / _neigh
 *   client <--c0==n0-- [ lb_from_backend ] <--n1==b0-- backend
 *                      reverse NAT backend -> VIP   (skips netfilter)
 *
 * tc (clsact ingress, direct action) programs on the node's two veths; the
 * same lookups as XDP programs for the `ebpf-xdp` mode.  Packets that are
 * not services (or not replies of tracked flows) pass untouched.
 *
 * Build: clang -O2 -g -target bpf -I/usr/include/<multiarch> -c lb.c
 */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>

#include "lb.h"

#define AF_INET 2
#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_TTL_OFF (IP_OFF + offsetof(struct iphdr, ttl))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))
#define IP_FRAG_MASK 0x3fff  /* MF flag | fragment offset */

char LICENSE[] SEC("license") = "GPL";  /* bpf_fib_lookup and bpf_redirect_neigh are GPL-only */

struct lb_pkt {
	struct lb_tuple t;
	__u32 l4_off;
	__u16 tot_len;
	__u8 ttl;
	__u8 tos;
};

/* ------------------------------------------------------------------ tc -- */

static __always_inline int skb_parse(struct __sk_buff *skb, struct lb_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__be16 ports[2];

	if ((void *)(ip + 1) > end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(IP_FRAG_MASK))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	p->t.saddr = ip->saddr;
	p->t.daddr = ip->daddr;
	p->t.proto = ip->protocol;
	p->t.tcp_flags = 0;
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	p->tot_len = bpf_ntohs(ip->tot_len);
	p->l4_off = ETH_HLEN + ip->ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
		return -1;
	p->t.sport = ports[0];
	p->t.dport = ports[1];
	if (p->t.proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + 13, &p->t.tcp_flags, 1))
		return -1;
	return 0;
}

/* Rewrite the destination (dst=1) or source address and port, fixing the
 * IP header checksum and the L4 checksum (which covers the pseudo header). */
static __always_inline int skb_nat(struct __sk_buff *skb, const struct lb_pkt *p, int dst,
				   const struct lb_nat *nat)
{
	__u32 csum_off = p->l4_off + (p->t.proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							       : offsetof(struct udphdr, check));
	__u64 l4flags = p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 old_addr = dst ? p->t.daddr : p->t.saddr;
	__be16 old_port = dst ? p->t.dport : p->t.sport;
	__be32 addr = nat->addr;
	__be16 port = nat->port;

	if (old_addr != addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, addr,
					l4flags | BPF_F_PSEUDO_HDR | sizeof(addr)) ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, sizeof(addr)) ||
		    bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &addr, sizeof(addr), 0))
			return -1;
	}
	if (old_port != port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, port, l4flags | sizeof(port)) ||
		    bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &port, sizeof(port), 0))
			return -1;
	}
	return 0;
}

/* Route the rewritten packet ourselves and hand it to the egress device:
 * the node's IP stack (and with it netfilter) never sees it. */
static __always_inline int skb_forward(struct __sk_buff *skb, const struct lb_pkt *p,
				       __be32 saddr, __be32 daddr, __be16 sport, __be16 dport)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET, .l4_protocol = p->t.proto, .sport = sport, .dport = dport,
		.tot_len = p->tot_len, .ifindex = skb->ingress_ifindex, .tos = p->tos,
		.ipv4_src = saddr, .ipv4_dst = daddr,
	};
	__u8 macs[2 * ETH_ALEN];
	__u8 ttl = p->ttl - 1;
	long rc;

	if (p->ttl <= 1)
		goto stack;  /* the stack sends the ICMP time exceeded */
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		goto stack;
	/* a router decrements the TTL; ttl and protocol share one checksum word */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)p->ttl << 8),
				bpf_htons((__u16)ttl << 8), 2) ||
	    bpf_skb_store_bytes(skb, IP_TTL_OFF, &ttl, 1, 0))
		goto error;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst };

		lb_count(LB_STAT_NEIGH);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	__builtin_memcpy(macs, fib.dmac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, fib.smac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		goto error;
	lb_count(LB_STAT_REDIRECT);
	return bpf_redirect(fib.ifindex, 0);
stack:
	lb_count(LB_STAT_STACK);
	return TC_ACT_OK;
error:
	lb_count(LB_STAT_ERROR);
	return TC_ACT_SHOT;
}

/* n0 ingress: service traffic from clients. */
SEC("tc")
int lb_from_client(struct __sk_buff *skb)
{
	struct lb_pkt p;
	struct lb_nat nat;
	int verdict;

	if (skb_parse(skb, &p))
		return TC_ACT_OK;
	verdict = lb_forward(&p.t, &nat);
	if (verdict == LB_PASS)
		return TC_ACT_OK;
	if (verdict == LB_DROP)
		return TC_ACT_SHOT;
	if (skb_nat(skb, &p, 1, &nat)) {
		lb_count(LB_STAT_ERROR);
		return TC_ACT_SHOT;
	}
	return skb_forward(skb, &p, p.t.saddr, nat.addr, p.t.sport, nat.port);
}

/* n1 ingress: replies from backends. */
SEC("tc")
int lb_from_backend(struct __sk_buff *skb)
{
	struct lb_pkt p;
	struct lb_nat nat;

	if (skb_parse(skb, &p))
		return TC_ACT_OK;
	if (lb_reply(&p.t, &nat) != LB_NAT)
		return TC_ACT_OK;
	if (skb_nat(skb, &p, 0, &nat)) {
		lb_count(LB_STAT_ERROR);
		return TC_ACT_SHOT;
	}
	return skb_forward(skb, &p, nat.addr, p.t.daddr, nat.port, p.t.dport);
}

/* ----------------------------------------------------------------- XDP -- */

/* RFC 1624 incremental update: HC' = ~(~HC + ~m + m'), 16-bit words. */
static __always_inline __u16 csum_update(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(from & 0xffff) + (__u16)~(from >> 16);
	sum += (to & 0xffff) + (to >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

struct xdp_pkt {
	struct lb_pkt p;
	struct ethhdr *eth;
	struct iphdr *ip;
	__be16 *ports;
	__sum16 *l4sum;
};

static __always_inline int xdp_parse(struct xdp_md *ctx, struct xdp_pkt *x)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	void *l4;

	if ((void *)(ip + 1) > end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(IP_FRAG_MASK))
		return -1;
	l4 = (void *)ip + (ip->ihl & 0xf) * 4;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > end)
			return -1;
		x->l4sum = &tcp->check;
		x->p.t.tcp_flags = ((__u8 *)tcp)[13];
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > end)
			return -1;
		x->l4sum = &udp->check;
		x->p.t.tcp_flags = 0;
	} else {
		return -1;
	}
	x->eth = eth;
	x->ip = ip;
	x->ports = l4;
	x->p.t.saddr = ip->saddr;
	x->p.t.daddr = ip->daddr;
	x->p.t.sport = x->ports[0];
	x->p.t.dport = x->ports[1];
	x->p.t.proto = ip->protocol;
	x->p.ttl = ip->ttl;
	x->p.tos = ip->tos;
	x->p.tot_len = bpf_ntohs(ip->tot_len);
	return 0;
}

static __always_inline void xdp_nat(struct xdp_pkt *x, int dst, const struct lb_nat *nat)
{
	__be32 *addr = dst ? &x->ip->daddr : &x->ip->saddr;
	__be16 *port = dst ? &x->ports[1] : &x->ports[0];
	int l4 = !(x->p.t.proto == IPPROTO_UDP && *x->l4sum == 0);  /* UDP: 0 = no checksum */
	__u16 sum = *x->l4sum;

	x->ip->check = csum_update(x->ip->check, *addr, nat->addr);
	sum = csum_update(sum, *addr, nat->addr);
	sum = csum_update(sum, *port, nat->port);
	if (l4)
		*x->l4sum = (x->p.t.proto == IPPROTO_UDP && sum == 0) ? 0xffff : sum;
	*addr = nat->addr;
	*port = nat->port;
}

static __always_inline int xdp_forward(struct xdp_md *ctx, struct xdp_pkt *x)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET, .l4_protocol = x->p.t.proto, .sport = x->ports[0],
		.dport = x->ports[1], .tot_len = x->p.tot_len, .ifindex = ctx->ingress_ifindex,
		.tos = x->p.tos, .ipv4_src = x->ip->saddr, .ipv4_dst = x->ip->daddr,
	};

	if (x->p.ttl <= 1 || bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS) {
		lb_count(LB_STAT_STACK);
		return XDP_PASS;
	}
	x->ip->check = csum_update(x->ip->check, bpf_htons((__u16)x->ip->ttl << 8),
				   bpf_htons((__u16)(x->ip->ttl - 1) << 8));
	x->ip->ttl -= 1;
	__builtin_memcpy(x->eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(x->eth->h_source, fib.smac, ETH_ALEN);
	lb_count(LB_STAT_REDIRECT);
	return bpf_redirect(fib.ifindex, 0);
}

SEC("xdp")
int lb_xdp_from_client(struct xdp_md *ctx)
{
	struct xdp_pkt x;
	struct lb_nat nat;
	int verdict;

	if (xdp_parse(ctx, &x))
		return XDP_PASS;
	verdict = lb_forward(&x.p.t, &nat);
	if (verdict == LB_PASS)
		return XDP_PASS;
	if (verdict == LB_DROP)
		return XDP_DROP;
	xdp_nat(&x, 1, &nat);
	return xdp_forward(ctx, &x);
}

SEC("xdp")
int lb_xdp_from_backend(struct xdp_md *ctx)
{
	struct xdp_pkt x;
	struct lb_nat nat;

	if (xdp_parse(ctx, &x))
		return XDP_PASS;
	if (lb_reply(&x.p.t, &nat) != LB_NAT)
		return XDP_PASS;
	xdp_nat(&x, 0, &nat);
	return xdp_forward(ctx, &x);
}

/* Peers of redirect targets: a veth delivers redirected XDP frames only
 * when its peer runs NAPI, which an attached XDP program turns on. */
SEC("xdp")
int lb_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
