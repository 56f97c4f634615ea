/* SPDX-License-Identifier: Apache-2.0 */
/*
 * labkit's eBPF service load balancer: map layouts and the lookups shared by
 * the tc and XDP programs in lb.c.  The layouts are mirrored byte for byte by
 * labkit/datapaths/ebpf.py (numpy dtypes), which creates, sizes and fills the
 * maps; keep both in step (the _Static_asserts below guard the sizes).
 *
 * Lookup, in the spirit of Cilium's bpf/lib/lb.h:
 *
 *   lb_services  (VIP, port, proto, slot 0)  -> count of backends
 *                (VIP, port, proto, slot s)  -> backend id, s = 1..count
 *   lb_backends  backend id                  -> (address, port)
 *   lb_ct        5-tuple + direction         -> NAT target, expiry
 *
 * A new flow picks slot 1 + random % count; the CT entry keeps it on that
 * backend, and a reverse entry keyed by the reply's tuple restores the VIP.
 */
#ifndef LABKIT_LB_H
#define LABKIT_LB_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NSEC 1000000000ULL
/* CT lifetimes (after Cilium's defaults) */
#define LB_SYN_TIMEOUT    (60 * NSEC)      /* until the first non-SYN packet */
#define LB_TCP_TIMEOUT    (21600 * NSEC)   /* established TCP */
#define LB_CLOSE_TIMEOUT  (10 * NSEC)      /* after a FIN in either direction */
#define LB_UDP_TIMEOUT    (60 * NSEC)
#define LB_REFRESH        (1 * NSEC)       /* extend an expiry only in steps this long */

#define LB_CT_FORWARD 0   /* client -> VIP, as it arrives at the node */
#define LB_CT_REPLY   1   /* backend -> client, as it arrives at the node */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct lb_svc_key {
	__be32 addr;      /* service VIP */
	__be16 port;      /* service port */
	__u16  slot;      /* 0: the service itself, 1..count: its backends */
	__u8   proto;     /* IPPROTO_TCP / IPPROTO_UDP */
	__u8   pad[3];
};

struct lb_svc_val {
	__u32 backend_id; /* slot >= 1 */
	__u16 count;      /* slot 0: number of backends */
	__u16 flags;
};

struct lb_backend {
	__be32 addr;
	__be16 port;
	__u8   proto;
	__u8   pad;
};

struct lb_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;
	__u8   dir;       /* LB_CT_FORWARD / LB_CT_REPLY */
	__u8   pad[2];
};

struct lb_ct_val {
	__u64  expires;    /* bpf_ktime_get_ns() deadline */
	__be32 nat_addr;   /* forward: backend address; reply: VIP */
	__be16 nat_port;   /* forward: backend port;    reply: service port */
	__u8   closing;    /* a FIN was seen */
	__u8   pad;
	__u32  backend_id;
	__u32  pad2;
};

_Static_assert(sizeof(struct lb_svc_key) == 12, "lb_svc_key layout");
_Static_assert(sizeof(struct lb_svc_val) == 8, "lb_svc_val layout");
_Static_assert(sizeof(struct lb_backend) == 8, "lb_backend layout");
_Static_assert(sizeof(struct lb_ct_key) == 16, "lb_ct_key layout");
_Static_assert(sizeof(struct lb_ct_val) == 24, "lb_ct_val layout");

enum lb_stat {
	LB_STAT_NEW,         /* new flow: backend selected, CT created */
	LB_STAT_EST,         /* forward packet of a known flow */
	LB_STAT_REPLY,       /* reply reverse-NATed to the VIP */
	LB_STAT_REDIRECT,    /* forwarded by bpf_redirect after a FIB lookup */
	LB_STAT_NEIGH,       /* forwarded by bpf_redirect_neigh */
	LB_STAT_STACK,       /* NATed but left to the stack (FIB said no) */
	LB_STAT_NO_BACKEND,  /* service without backends: dropped */
	LB_STAT_ERROR,       /* rewrite failed: dropped */
	LB_STAT_MAX,
};

/* max_entries of the first three maps are set by labkit when it creates
 * them (sized to the catalog); the object's values are placeholders. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc_val);
	__uint(max_entries, 1);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, 1);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_ct_key);
	__type(value, struct lb_ct_val);
	__uint(max_entries, 1);
} lb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, LB_STAT_MAX);
} lb_stats SEC(".maps");

/* A parsed IPv4 TCP/UDP packet. */
struct lb_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;
	__u8   tcp_flags;
};

struct lb_nat {
	__be32 addr;
	__be16 port;
};

enum lb_verdict { LB_PASS, LB_DROP, LB_NAT };

static __always_inline void lb_count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&lb_stats, &what);

	if (n)
		*n += 1;
}

static __always_inline __u64 lb_lifetime(const struct lb_tuple *t)
{
	if (t->proto != IPPROTO_TCP)
		return LB_UDP_TIMEOUT;
	if (t->tcp_flags & TCP_SYN)
		return LB_SYN_TIMEOUT;
	return LB_TCP_TIMEOUT;
}

/* Keep an entry alive; FIN starts the short close timeout. */
static __always_inline void lb_ct_touch(struct lb_ct_val *v, const struct lb_tuple *t, __u64 now)
{
	__u64 want;

	if (t->tcp_flags & TCP_FIN) {
		v->closing = 1;
		v->expires = now + LB_CLOSE_TIMEOUT;
		return;
	}
	if (v->closing)
		return;
	want = now + lb_lifetime(t);
	if (want > v->expires + LB_REFRESH)
		v->expires = want;
}

/* After a RST or FIN on one entry, update or drop its partner. */
static __always_inline void lb_ct_partner(struct lb_ct_key *k, const struct lb_tuple *t, __u64 now)
{
	struct lb_ct_val *v;

	if (t->tcp_flags & TCP_RST) {
		bpf_map_delete_elem(&lb_ct, k);
		return;
	}
	v = bpf_map_lookup_elem(&lb_ct, k);
	if (v)
		lb_ct_touch(v, t, now);
}

static __always_inline int lb_select(const struct lb_tuple *t, __u32 *backend_id, struct lb_nat *nat)
{
	struct lb_svc_key key = { .addr = t->daddr, .port = t->dport, .proto = t->proto };
	struct lb_svc_val *svc, *slot;
	struct lb_backend *be;
	__u32 id;

	svc = bpf_map_lookup_elem(&lb_services, &key);
	if (!svc)
		return LB_PASS;
	if (svc->count == 0)
		return LB_DROP;
	key.slot = 1 + bpf_get_prandom_u32() % svc->count;
	slot = bpf_map_lookup_elem(&lb_services, &key);
	if (!slot)
		return LB_DROP;
	id = slot->backend_id;
	be = bpf_map_lookup_elem(&lb_backends, &id);
	if (!be || be->addr == 0)
		return LB_DROP;
	*backend_id = id;
	nat->addr = be->addr;
	nat->port = be->port;
	return LB_NAT;
}

/*
 * Client -> node: is this a service?  Returns LB_NAT with the backend to
 * rewrite the destination to, LB_PASS (not a service: leave it alone) or
 * LB_DROP (a service without backends).
 */
static __always_inline int lb_forward(const struct lb_tuple *t, struct lb_nat *nat)
{
	struct lb_ct_key fk = { .saddr = t->saddr, .daddr = t->daddr, .sport = t->sport,
				.dport = t->dport, .proto = t->proto, .dir = LB_CT_FORWARD };
	struct lb_ct_key rk = { .daddr = t->saddr, .dport = t->sport, .proto = t->proto,
				.dir = LB_CT_REPLY };
	struct lb_ct_val fv = {}, rv = {}, *v;
	__u64 now = bpf_ktime_get_ns();
	__u32 id = 0;
	int verdict;

	v = bpf_map_lookup_elem(&lb_ct, &fk);
	/* a fresh SYN on a closing tuple (port reuse) starts a new flow */
	if (v && v->expires > now &&
	    !(v->closing && (t->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)) {
		nat->addr = v->nat_addr;
		nat->port = v->nat_port;
		rk.saddr = v->nat_addr;
		rk.sport = v->nat_port;
		lb_count(LB_STAT_EST);
		if (t->tcp_flags & (TCP_RST | TCP_FIN)) {
			if (t->tcp_flags & TCP_RST)
				bpf_map_delete_elem(&lb_ct, &fk);
			else
				lb_ct_touch(v, t, now);
			lb_ct_partner(&rk, t, now);
		} else {
			lb_ct_touch(v, t, now);
		}
		return LB_NAT;
	}

	verdict = lb_select(t, &id, nat);
	if (verdict == LB_DROP)
		lb_count(LB_STAT_NO_BACKEND);
	if (verdict != LB_NAT)
		return verdict;
	lb_count(LB_STAT_NEW);
	if (t->tcp_flags & TCP_RST)
		return LB_NAT;  /* nothing to track */

	fv.expires = now + lb_lifetime(t);
	fv.nat_addr = nat->addr;
	fv.nat_port = nat->port;
	fv.backend_id = id;
	rk.saddr = nat->addr;
	rk.sport = nat->port;
	rv.expires = fv.expires;
	rv.nat_addr = t->daddr;
	rv.nat_port = t->dport;
	rv.backend_id = id;
	bpf_map_update_elem(&lb_ct, &fk, &fv, BPF_ANY);
	bpf_map_update_elem(&lb_ct, &rk, &rv, BPF_ANY);
	return LB_NAT;
}

/*
 * Backend -> node: a reply of a tracked flow?  LB_NAT with the VIP and
 * service port to restore as the source, else LB_PASS.
 */
static __always_inline int lb_reply(const struct lb_tuple *t, struct lb_nat *nat)
{
	struct lb_ct_key rk = { .saddr = t->saddr, .daddr = t->daddr, .sport = t->sport,
				.dport = t->dport, .proto = t->proto, .dir = LB_CT_REPLY };
	struct lb_ct_key fk = { .saddr = t->daddr, .sport = t->dport, .proto = t->proto,
				.dir = LB_CT_FORWARD };
	__u64 now = bpf_ktime_get_ns();
	struct lb_ct_val *v;

	v = bpf_map_lookup_elem(&lb_ct, &rk);
	if (!v || v->expires <= now)
		return LB_PASS;
	nat->addr = v->nat_addr;
	nat->port = v->nat_port;
	fk.daddr = v->nat_addr;
	fk.dport = v->nat_port;
	lb_count(LB_STAT_REPLY);
	if (t->tcp_flags & (TCP_RST | TCP_FIN)) {
		if (t->tcp_flags & TCP_RST)
			bpf_map_delete_elem(&lb_ct, &rk);
		else
			lb_ct_touch(v, t, now);
		lb_ct_partner(&fk, t, now);
	} else {
		lb_ct_touch(v, t, now);
	}
	return LB_NAT;
}

#endif /* LABKIT_LB_H */
