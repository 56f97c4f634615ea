"""Published figures labkit holds itself against, as data with their sources.

These are other people's numbers, from other setups: the report shows them
beside ours, labelled as published, and never mixes them into our fits.
Values marked ``reading="chart"`` were read off a published chart and carry
a few percent of reading error.  Transcribed from the project's design notes
(ANCHORS.md, not shipped); docs/anchors.md is this table rendered
(:func:`markdown`, kept equal by tests/test_project.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from labkit.analysis.ipvs_answer import ipvs_phrases, ipvs_rows, pacing_words


@dataclass(frozen=True)
class Source:
    key: str
    title: str
    publisher: str
    year: int
    url: str
    setup: str

    def cite(self) -> str:
        return f"{self.publisher}, \u201c{self.title}\u201d ({self.year}), {self.url}"


SOURCES: dict[str, Source] = {s.key: s for s in [
    Source("tigera", "Comparing kube-proxy modes: iptables or IPVS?", "Tigera / Project Calico blog",
           2019, "https://www.tigera.io/blog/comparing-kube-proxy-modes-iptables-or-ipvs/",
           "Go client pod on its own node, 1,000 requests/s to one service backed by 10 nginx pods; "
           "10 to 10,000 services with 10 endpoints each; no keepalive; average round-trip time of "
           "whole HTTP requests and total CPU of the client node"),
    Source("k8s-nft", "NFTables mode for kube-proxy", "Kubernetes blog (and KEP-3866)", 2025,
           "https://kubernetes.io/blog/2025/02/28/nftables-kube-proxy/",
           "first-packet round-trip time of new connections through kube-proxy rules, "
           "5,000 to 30,000 services"),
    Source("k8s-issues", "kube-proxy control-plane figures", "kubernetes/kubernetes issues and PRs",
           2016, "https://github.com/kubernetes/kubernetes/issues",
           "iptables-restore and full-sync timings reported in issues and pull requests"),
    Source("cilium-1.6", "Cilium 1.6: KVstore-free operation, 100% kube-proxy replacement",
           "Cilium blog", 2019, "https://cilium.io/blog/2019/08/20/cilium-16/",
           "ab, 100,000 sequential HTTP GETs through a service to nginx; time per request"),
    Source("cilium-1.8", "Cilium 1.8 release", "Cilium blog", 2020,
           "https://cilium.io/blog/2020/06/22/cilium-18/",
           "one service, forwarded requests per second"),
    Source("xdp-2018", "The eXpress Data Path: fast programmable packet processing in the "
           "operating system kernel", "Hoiland-Jorgensen et al., CoNEXT", 2018,
           "https://doi.org/10.1145/3281411.3281443", "one core, 64-byte packets"),
    Source("this-machine", "Earlier scapy SYN probes on this kind of machine",
           "labkit project notes", 2026, "docs/anchors.md",
           "2 vCPUs, kernel 6.18, kube-proxy-style rulesets, target the last service, "
           "10 endpoints per service; median SYN to SYN-ACK"),
]}


def _rows() -> list[dict]:
    rows: list[dict] = []

    def add(source, series, metric, unit, reading, pairs, note=""):
        for services, value in pairs:
            lo = hi = value
            if isinstance(value, tuple):
                lo, hi = value
                value = (lo + hi) / 2
            rows.append(dict(source=source, series=series, metric=metric, unit=unit,
                             services=services, value=float(value), low=float(lo), high=float(hi),
                             reading=reading, note=note))

    svc = [10, 100, 500, 1000, 5000, 10000]
    add("tigera", "iptables", "rtt_mean", "ms", "chart", zip(svc, [1.36, 1.36, 1.43, 1.46, 2.39, 4.29]))
    add("tigera", "ipvs", "rtt_mean", "ms", "chart", zip(svc, [1.36, 1.36, 1.40, 1.43, 1.70, 2.04]))
    add("tigera", "iptables", "cpu", "cores", "chart", zip(svc, [0.54, 0.54, 0.54, 0.56, 0.70, 0.90]))
    add("tigera", "ipvs", "cpu", "cores", "chart", zip(svc, [0.54, 0.54, 0.54, 0.55, 0.58, 0.62]))
    nsvc = [5000, 10000, 30000]
    add("k8s-nft", "iptables", "p50", "us", "chart", zip(nsvc, [48, 62, 273]))
    add("k8s-nft", "iptables", "p99", "us", "chart", zip(nsvc, [153, 258, 715]))
    add("k8s-nft", "nftables", "p50", "us", "chart", zip(nsvc, [14, 14, 14]))
    add("k8s-nft", "nftables", "p99", "us", "chart", zip(nsvc, [37, 37, 38]))
    csvc = [1, 100, 1000, 2000, 2768]
    add("cilium-1.6", "iptables", "time_per_request", "us", "chart",
        zip(csvc, [291, 300, 380, 453, 576]))
    add("cilium-1.6", "ebpf", "time_per_request", "us", "text", [(1, (296, 300)), (2768, (296, 300))],
        "flat at about 296-300 us over 1 to 2,768 services")
    add("cilium-1.8", "iptables", "requests_per_s", "M/s", "text", [(1, 2.1)], "about; IPVS similar")
    add("cilium-1.8", "ebpf-tc", "requests_per_s", "M/s", "text", [(1, 3.6)])
    add("cilium-1.8", "ebpf-xdp", "requests_per_s", "M/s", "text", [(1, 10.0)],
        "the traffic generator's limit")
    add("k8s-issues", "iptables", "restore_s", "s", "text", [(1000, (0.27, 0.70))],
        "one iptables-restore at 1,000 services (2016)")
    add("k8s-issues", "iptables-nft", "restore_s", "s", "text", [(None, 12.8)],
        "a 695,992-line ruleset, iptables-restore with the nft backend")
    add("k8s-issues", "nftables", "full_sync_s", "s", "text", [(44125, 16 * 60 + 44)],
        "full sync of 44,125 services")
    add("k8s-issues", "nftables", "add_one_s", "s", "text", [(10000, 0.141)],
        "adding one service at 10,000 services (was 8 min)")
    add("this-machine", "none", "p50", "us", "text", [(0, 35)], "no rules")
    add("this-machine", "iptables-nft", "p50", "us", "text", [(1000, 64), (10000, 197)])
    add("this-machine", "iptables-legacy", "p50", "us", "text", [(10000, (68, 120))])
    add("this-machine", "nftables", "p50", "us", "text", [(10000, (30, 50))], "flat")
    return rows


def table(source: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The published figures, one row per value (tidy), with their source."""
    df = pd.DataFrame(_rows())
    df["services"] = df["services"].astype("Int64")
    if source is not None:
        df = df[df["source"] == source]
    if metric is not None:
        df = df[df["metric"] == metric]
    df = df.assign(cite=df["source"].map(lambda k: SOURCES[k].cite()))
    return df.reset_index(drop=True)


def segment_slopes(source: str, metric: str, scale: float = 1000.0) -> pd.DataFrame:
    """Slopes between consecutive published points, in (unit x 1/scale) per
    service: for microsecond values the default gives ns/service."""
    df = table(source, metric).dropna(subset=["services"]).sort_values(["series", "services"])
    out = []
    for series, g in df.groupby("series", sort=False):
        s = g["services"].to_numpy(dtype=float)
        v = g["value"].to_numpy(dtype=float)
        for i in range(len(s) - 1):
            out.append(dict(source=source, series=series, metric=metric, from_services=int(s[i]),
                            to_services=int(s[i + 1]),
                            slope=(v[i + 1] - v[i]) / (s[i + 1] - s[i]) * scale))
    return pd.DataFrame(out)


# published statements the report quotes beside the numbers
CLAIMS: list[tuple[str, str]] = [
    ("tigera", "The difference between iptables and IPVS is insignificant below 1,000 services "
               "and only visible without keepalive; at 10,000 services iptables costs about 35% "
               "of a core extra, IPVS about 8%; with keepalive the iptables penalty is about 2%."),
    ("k8s-nft", "nftables first-packet latency is flat; iptables p99 grows about 21-23 ns per "
                "service; iptables p50 is not linear (about 3 ns/service from 5k to 10k, 11 ns "
                "from 10k to 30k). nftables performs like IPVS, slightly better."),
    ("k8s-issues", "nftables kube-proxy: creating 10k services went from 25 min to 9 min; adding "
                   "one service at 10k services from 8 min to 141 ms. 5,000-node scale test: "
                   "network programming latency p50 about 27 s, then 13 s and 5 s after "
                   "iptables-restore minimization and a shorter sync period."),
    ("xdp-2018", "Drop rate: XDP 24 Mpps, iptables raw table 4.8 Mpps, with conntrack 1.8 Mpps. "
                 "Katran (XDP) vs IPVS, Mpps at 1..6 cores: 5.2/10.1/14.6/19.5/23.4/29.3 vs "
                 "1.2/2.4/3.7/4.8/6.0/7.3."),
    ("this-machine", "Run-to-run spread on these shared machines is large: compare only inside "
                     "one run."),
]

# which published series corresponds to which labkit mode
SERIES_FOR_MODE = {
    "iptables-legacy": "iptables", "iptables-nft": "iptables", "nftables": "nftables",
    "ipvs": "ipvs", "ebpf": "ebpf",
}


#: the repository (a source checkout) and its committed default reference run: docs/anchors.md
#: sets its verdicts beside the seed's claims, reports compare this machine's speed with it
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_RUN = os.path.join(ROOT, "data", "reference", "default-6.18")
REFERENCE_CLAIMS = os.path.join(REFERENCE_RUN, "claims.csv")
#: the reference run with IPVS and both iptables backends in one kernel (labkit's UML build)
ONE_KERNEL_RUN = os.path.join(ROOT, "data", "reference", "uml-7.2.13")


def ipvs_markdown(run: str = ONE_KERNEL_RUN) -> list[str]:
    """Where IPVS beats each iptables backend, and what moving from IPVS to
    nftables changes, in the one-kernel reference run (its ``crossover.csv``:
    fitted p50 curves, 95% intervals over the rounds), in the report's words
    (:func:`labkit.analysis.ipvs_answer.ipvs_phrases`), beside the published
    statements on IPVS; nothing when the file is not there."""
    path = os.path.join(run, "crossover.csv")
    if not os.path.isfile(path):
        return []
    rows = ipvs_rows(pd.read_csv(path))
    rel = os.path.relpath(run, ROOT)
    lines = ["", "## Where IPVS beats iptables, in one kernel", "",
             f"From `{rel}/crossover.csv` (every mode in labkit's user-mode Linux build; fitted p50 curves "
             "of the first packet, 95% intervals over the rounds), in the words of the run's report. "
             "Beside it: Tigera, \"the difference between iptables and IPVS is insignificant below 1,000 "
             "services\"; Kubernetes, \"nftables performs like IPVS, slightly better\" (IPVS is deprecated "
             "since 1.35, nftables is where its users are sent).", "",
             "| target | pacing | where IPVS beats iptables, and what moving from IPVS to nftables changes |",
             "| --- | --- | --- |"]
    for (target, _, pacing), g in rows.groupby(["target", "probe", "pacing"], sort=True):
        parts = ipvs_phrases(g)
        if parts:
            lines.append(f"| {target} | {pacing_words(float(pacing))} | " + "; ".join(parts) + " |")
    return lines


def claims_markdown(path: str = REFERENCE_CLAIMS) -> list[str]:
    """The seed's claims against the reference run's verdicts: every deciding
    row of its ``claims.csv`` (claim, mode, target, instrument, verdict,
    figure); nothing when the file is not there."""
    if not os.path.isfile(path):
        return []
    c = pd.read_csv(path)
    c = c[c["role"] == "decides"]
    rel = os.path.relpath(path, ROOT)
    lines = ["", "## The seed's claims against the reference run", "",
             f"Every deciding row of `{rel}` (the default sweep, `make report`'s; regenerate with "
             "`make publish`). The seed's load (SYN probes paced at 1,000/s) decides; back to back is "
             "beside it in the run's report. `kernel`: where the mode ran and decides: a mode measured on "
             "the host and in labkit's user-mode Linux is decided on the host, its user-mode Linux rows "
             "stand beside; IPVS, measured in user-mode Linux only, is decided there.",
             "", "| claim | mode | versus | kernel | target | instrument | verdict | figure |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in c.itertuples(index=False):
        fmt = "{:,.0f}" if r.unit == "services" else "{:+,.1f}"
        fig = (f"{fmt.format(r.value)} [{fmt.format(r.ci_low)}, {fmt.format(r.ci_high)}] {r.unit}"
               if pd.notna(r.value) else "")
        k = "" if pd.isna(r.k) else f", k = {r.k:g}"
        lines.append(f"| {r.claim} | {r.mode} | {'' if pd.isna(r.versus) else r.versus} | {r.kernel} | {r.target} | "
                     f"{'' if pd.isna(r.instrument) else r.instrument}{k} | {r.verdict} | {fig} |")
    return lines


def markdown() -> str:
    """docs/anchors.md: every source and every published figure labkit compares
    with, and the seed's claims against the reference run's verdicts."""
    lines = ["# Published figures labkit compares with", "",
             "Generated from `labkit/analysis/anchors.py` (`python -c 'from labkit.analysis import anchors; "
             "print(anchors.markdown())'`). Other people's numbers from other setups: reports show them "
             "beside ours, labelled, and never fit them. `chart` readings were read off a published chart "
             "and carry a few percent of reading error.", "", "## Sources", "",
             "| key | source | setup |", "| --- | --- | --- |"]
    for s in SOURCES.values():
        lines.append(f"| `{s.key}` | {s.cite()} | {s.setup} |")
    lines += ["", "## Figures", "", "| source | series | metric | unit | services | value | low | high | reading |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in table().itertuples(index=False):
        n = "" if pd.isna(r.services) else f"{int(r.services):,}"
        lines.append(f"| {r.source} | {r.series} | {r.metric} | {r.unit} | {n} | {r.value:g} | {r.low:g} | "
                     f"{r.high:g} | {r.reading} |")
    lines += claims_markdown()
    lines += ipvs_markdown()
    return "\n".join(lines) + "\n"
