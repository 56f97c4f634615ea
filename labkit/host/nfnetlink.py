"""nf_tables over netlink, for small transactions on a large table.

``nft`` 1.0.6 (Debian 12) fills a cache of every chain in the ruleset before
it adds a rule or a set element, and before it deletes a chain: with
kube-proxy's layout at 10,000 services that is 110,000 chains read back for
a change of a dozen (docs/nftables.md, "Where the time of one change goes").
This module sends such a change as one nf_tables batch, the messages ``nft``
itself would send, without reading anything back.  It encodes only what the
nftables datapath needs: chains, rules made of the expressions below, and
set elements with a verdict.  Building messages is pure (and unit-tested
byte for byte); :func:`transact` is the one function that talks to a kernel.

Constants are those of ``linux/netfilter/nf_tables.h`` and
``linux/netfilter/nfnetlink.h``; attribute layout as the kernel parses it
(``nf_tables_api.c``), checked against ``nft --debug=netlink`` output.
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labkit.core.errors import LabkitError
from labkit.host import netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000

# message types (NFT_MSG_*)
DELTABLE, NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, NEWSETELEM, DELSETELEM = 2, 3, 5, 6, 8, 12, 14
# verdicts, registers, payload bases, comparisons, meta keys, numgen, nat
NFT_JUMP, NFT_GOTO = -3, -4
REG_VERDICT, REG_1, REG_2 = 0, 1, 2
BASE_NETWORK, BASE_TRANSPORT = 1, 2
CMP_EQ, CMP_NEQ = 0, 1
META_L4PROTO = 16
NG_RANDOM = 1
NAT_DNAT = 1
NAT_RANGE_PROTO_SPECIFIED = 0x2


# ---- attributes (pure) ------------------------------------------------------------
def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!i" if value < 0 else "!I", value))


def _data(value: bytes) -> bytes:            # NFTA_DATA_VALUE
    return attr(1, value)


def _verdict(code: int, chain: str | None = None) -> bytes:   # NFTA_DATA_VERDICT
    return nest(2, be32(1, code), *([string(2, chain)] if chain else []))


# ---- expressions (pure): each is (name, attributes) ----------------------------
Expr = tuple[str, bytes]


def payload(base: int, offset: int, length: int, dreg: int = REG_1) -> Expr:
    return "payload", be32(1, dreg) + be32(2, base) + be32(3, offset) + be32(4, length)


def cmp(value: bytes, op: int = CMP_EQ, sreg: int = REG_1) -> Expr:
    return "cmp", be32(1, sreg) + be32(2, op) + nest(3, _data(value))


def meta(key: int, dreg: int = REG_1) -> Expr:
    return "meta", be32(1, dreg) + be32(2, key)


def bitwise(mask: bytes, xor: bytes, reg: int = REG_1) -> Expr:
    return "bitwise", (be32(1, reg) + be32(2, reg) + be32(3, len(mask))
                       + nest(4, _data(mask)) + nest(5, _data(xor)))


def immediate(value: bytes, dreg: int) -> Expr:
    return "immediate", be32(1, dreg) + nest(2, _data(value))


def verdict(code: int, chain: str | None = None) -> Expr:
    return "immediate", be32(1, REG_VERDICT) + nest(2, _verdict(code, chain))


def numgen_random(modulus: int, dreg: int = REG_1) -> Expr:
    return "numgen", be32(1, dreg) + be32(2, modulus) + be32(3, NG_RANDOM)


def dnat_ipv4(addr_reg: int = REG_1, proto_reg: int = REG_2) -> Expr:
    return "nat", (be32(1, NAT_DNAT) + be32(2, socket.AF_INET) + be32(3, addr_reg)
                   + be32(5, proto_reg) + be32(7, NAT_RANGE_PROTO_SPECIFIED))


def _expressions(exprs: Sequence[Expr]) -> bytes:
    return nest(4, *(nest(1, string(1, name), nest(2, data)) for name, data in exprs))


# ---- messages (pure): (type, flags, attributes) ----------------------------------
@dataclass(frozen=True)
class Message:
    kind: int
    flags: int
    attrs: bytes


def new_chain(table: str, chain: str) -> Message:
    return Message(NEWCHAIN, NLM_F_CREATE, string(1, table) + string(3, chain))


def delete_chain(table: str, chain: str) -> Message:
    return Message(DELCHAIN, 0, string(1, table) + string(3, chain))


def flush_chain(table: str, chain: str) -> Message:
    """Every rule of ``chain`` deleted (a DELRULE with no handle)."""
    return Message(DELRULE, 0, string(1, table) + string(2, chain))


def new_rule(table: str, chain: str, exprs: Sequence[Expr]) -> Message:
    return Message(NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                   string(1, table) + string(2, chain) + _expressions(exprs))


def _elements(table: str, set_name: str, elems: Iterable[tuple[bytes, bytes]]) -> bytes:
    items = [nest(1, nest(1, _data(key)), *([nest(2, data)] if data else [])) for key, data in elems]
    return string(1, table) + string(2, set_name) + nest(3, *items)


def add_elements(table: str, set_name: str, elems: Iterable[tuple[bytes, int, str]]) -> Message:
    """``elems``: (key, verdict code, chain) of a verdict map."""
    return Message(NEWSETELEM, NLM_F_CREATE,
                   _elements(table, set_name, ((k, _verdict(c, ch)) for k, c, ch in elems)))


def delete_elements(table: str, set_name: str, keys: Iterable[bytes]) -> Message:
    return Message(DELSETELEM, 0, _elements(table, set_name, ((k, b"") for k in keys)))


def delete_table(table: str) -> Message:
    return Message(DELTABLE, 0, string(1, table))


def _nlmsg(mtype: int, flags: int, seq: int, family: int, res_id: int, body: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def batch(messages: Sequence[Message], family: int = socket.AF_INET) -> bytes:
    """One nf_tables transaction: BATCH_BEGIN, the messages (sequence numbers
    1..n, an ACK asked for every one), BATCH_END (pure)."""
    out = [_nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES)]
    for seq, m in enumerate(messages, 1):
        out.append(_nlmsg((NFNL_SUBSYS_NFTABLES << 8) | m.kind, NLM_F_REQUEST | NLM_F_ACK | m.flags,
                          seq, family, 0, m.attrs))
    out.append(_nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, len(messages) + 1, socket.AF_UNSPEC,
                      NFNL_SUBSYS_NFTABLES))
    return b"".join(out)


# ---- the kernel ------------------------------------------------------------------
class TransactionError(LabkitError):
    def __init__(self, seq: int, err: int, what: str):
        super().__init__(f"nf_tables refused message {seq} ({what}): {os.strerror(err)}")
        self.seq, self.errno = seq, err


_NAMES = {DELTABLE: "delete table", NEWCHAIN: "add chain", DELCHAIN: "delete chain",
          NEWRULE: "add rule", DELRULE: "flush chain", NEWSETELEM: "add element",
          DELSETELEM: "delete element"}


def transact(ns: str, messages: Sequence[Message], family: int = socket.AF_INET,
             timeout: float = 600) -> None:
    """Send ``messages`` as one transaction in namespace ``ns``: all applied,
    or none (the kernel aborts the batch on the first error, which is raised
    as :class:`TransactionError` naming the message)."""
    if not messages:
        return
    data = batch(messages, family)
    with netns.entered(ns):
        sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with sk:
        # the batch travels as one message: room for it (root may force the size)
        sk.setsockopt(socket.SOL_SOCKET, 32, max(len(data) * 2, 1 << 20))   # SO_SNDBUFFORCE
        sk.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)                       # SO_RCVBUFFORCE
        sk.settimeout(timeout)
        sk.bind((0, 0))
        sk.send(data)
        acked: set[int] = set()
        while len(acked) < len(messages):
            buf, off = sk.recv(1 << 20), 0
            while off + 20 <= len(buf):
                length, mtype, _, seq, _ = struct.unpack_from("=IHHII", buf, off)
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", buf, off + 16)[0]
                    if err:
                        kind = messages[seq - 1].kind if 0 < seq <= len(messages) else -1
                        raise TransactionError(seq, err, _NAMES.get(kind, "batch"))
                    acked.add(seq)
                off += (length + 3) & ~3

