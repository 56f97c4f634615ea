"""``python -m labkit`` / ``labkit``: doctor, sweep, report, clean, bench, cpu, control."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys

from .errors import LabkitError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def _sigterm(signum, frame):  # unwind context managers: teardown runs
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------

def cmd_doctor(args) -> int:
    from .doctor import doctor
    rows = doctor()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["mode"]) for r in rows)
    for r in rows:
        where = r["where"] or "none"
        print(f"{r['mode']:<{w}}  {where:<5}  {r['reason'] or r['summary']}")
    return 0


def _sweep_params(args):
    from .params import SweepParams
    over = {k: getattr(args, k) for k in ("modes", "services", "endpoints", "targets", "probes",
                                          "rounds", "warmup", "seed", "timeout", "kernel",
                                          "probe_kinds", "service_cidr", "endpoint_cidr", "ports")}
    if args.params:
        return SweepParams.from_yaml(args.params, **over)
    return SweepParams.from_dict({k: v for k, v in over.items() if v is not None})


def cmd_sweep(args) -> int:
    from .params import check_out_dir
    from .sweep import Sweep
    options_given = any(getattr(args, k) is not None for k in (
        "modes", "services", "endpoints", "targets", "probes", "rounds", "warmup", "seed",
        "timeout", "kernel", "probe_kinds", "service_cidr", "endpoint_cidr", "ports", "params"))
    params = _sweep_params(args) if (options_given or not args.resume) else None
    check_out_dir(args.out, args.resume)
    from .netns import require_root
    require_root()
    from .vm import choose_kernel, sweep_in_vm
    where, why = choose_kernel(params.kernel if params else "host", params.modes if params else [],
                               args.out, args.resume)
    if where == "vm":  # re-run this very sweep inside the pinned VM kernel
        print(f"labkit: {why}", file=sys.stderr)
        res = sweep_in_vm(args.argv, args.out)
        print(f"wrote {args.out}/samples.parquet, points.parquet, meta.json (VM kernel "
              f"{res.facts['kernel_release']}, {res.facts['accel']}, boot {res.facts['boot_s']:.0f} s)")
        return 0
    cmd = "python -m labkit sweep " + " ".join(shlex.quote(a) for a in args.argv)
    out = Sweep(params, args.out, resume=args.resume, command=cmd,
                progress=not args.quiet).run()
    print(f"wrote {out}/samples.parquet, points.parquet, meta.json")
    return 0


def cmd_report(args) -> int:
    from .report import build_report
    if not os.path.isdir(args.run_dir):
        raise UsageError(f"{args.run_dir} is not a run directory")
    path = build_report(args.run_dir, out_dir=args.out_dir, budget_us=args.budget_us,
                        budget_frac=args.budget_frac)
    print(f"wrote {path}")
    return 0


def cmd_clean(args) -> int:
    from .clean import clean
    removed = clean(force=args.all)
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print("nothing of labkit's was left on this machine")
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_program, bench_send
    if args.what == "program":
        from .params import _int, _names
        from .datapaths import MODES
        modes = _names(args.modes, "modes", tuple(MODES))
        services = _int(args.services, "services", 0, 1_000_000)
        for row in bench_program(modes, services, args.endpoints, args.repeat):
            print(json.dumps(row))
    else:
        print(json.dumps(bench_send(args.seconds)))
    return 0


# -- experiments of issue 7 (labkit/cpu.py, labkit/control.py) ------------------

def cmd_cpu(args) -> int:
    from .cpu import run_cpu
    from .netns import require_root
    from .params import SweepParams
    over = {k: getattr(args, k) for k in ("modes", "services", "endpoints", "targets", "rounds", "seed")}
    params = SweepParams.from_dict({k: v for k, v in over.items() if v is not None})
    require_root()
    out = run_cpu(params, args.out, rate=args.rate, seconds=args.seconds,
                  command="python -m labkit cpu " + " ".join(shlex.quote(a) for a in args.argv),
                  progress=not args.quiet)
    print(f"wrote {out}/cpu.parquet, cpu.json")
    return 0


def cmd_control(args) -> int:
    from .control import run_control
    from .datapaths import MODES
    from .netns import require_root
    from .params import _int, _names, _split
    modes = _names(args.modes, "modes", tuple(MODES))
    services = sorted({_int(v, "services", 0, 1_000_000) for v in _split(args.services, "services")})
    endpoints = _int(args.endpoints, "endpoints", 1, 1000)
    rounds = _int(args.rounds, "rounds", 1, 100)
    require_root()
    out = run_control(modes, services, args.out, endpoints=endpoints, rounds=rounds, seed=args.seed,
                      verify=not args.no_verify, progress=not args.quiet,
                      command="python -m labkit control " + " ".join(shlex.quote(a) for a in args.argv))
    print(f"wrote {out}/control.parquet, control.json")
    return 0


# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="labkit", description=(
        "Measure Kubernetes service datapaths (kube-proxy iptables legacy/nft, nftables, IPVS, "
        "eBPF) on this kernel, inside network namespaces it creates and removes."))
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    d = sub.add_parser("doctor", help="which modes run here, and why not")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("sweep", help="measure first-packet latency across service counts")
    s.add_argument("--params", help="YAML parameter file (params/*.yaml); options override it")
    s.add_argument("--modes", help="comma-separated modes (see `labkit doctor`)")
    s.add_argument("--services", help="comma-separated service counts, e.g. 0,1000,10000")
    s.add_argument("--endpoints", help="endpoints per service (default 10)")
    s.add_argument("--ports", help="service ports (default 80)")
    s.add_argument("--targets", help="first,middle,last,random,none (default last,random,none)")
    s.add_argument("--probes", help="probes per point (default 300)")
    s.add_argument("--rounds", help="repetitions of every point, interleaved (default 3)")
    s.add_argument("--warmup", help="unrecorded probes before each point (default 20)")
    s.add_argument("--seed", help="seed of the order and the random targets (default 1)")
    s.add_argument("--timeout", type=float, help="seconds to wait for an answer (default 0.5)")
    s.add_argument("--kernel", help="host, vm or auto (default auto)")
    s.add_argument("--probe-kinds", dest="probe_kinds", help="probe kinds (default syn)")
    s.add_argument("--service-cidr", dest="service_cidr", help="VIP range (default 10.96.0.0/12)")
    s.add_argument("--endpoint-cidr", dest="endpoint_cidr", help="endpoint range (default 10.128.0.0/9)")
    s.add_argument("--out", required=True, help="run directory to write")
    s.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_sweep)

    r = sub.add_parser("report", help="analyse a run directory into report.html")
    r.add_argument("run_dir")
    r.add_argument("--out-dir", help="where to write (default: the run directory)")
    r.add_argument("--budget-us", type=float, default=10.0, help="latency budget in us (default 10)")
    r.add_argument("--budget-frac", type=float, default=0.10,
                   help="budget as a fraction of the 0-service median (default 0.10)")
    r.set_defaults(fn=cmd_report)

    c = sub.add_parser("clean", help="remove what crashed or killed runs left behind")
    c.add_argument("--all", action="store_true", help="also runs whose process is still alive")
    c.set_defaults(fn=cmd_clean)

    b = sub.add_parser("bench", help="benchmarks: programming time, probe send capacity")
    b.add_argument("what", choices=["program", "send"])
    b.add_argument("--modes", default="iptables-legacy,iptables-nft")
    b.add_argument("--services", default="10000")
    b.add_argument("--endpoints", type=int, default=10)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--seconds", type=float, default=2.0)
    b.set_defaults(fn=cmd_bench)

    # -- experiments of issue 7 -------------------------------------------------------
    u = sub.add_parser("cpu", help="CPU time the node spends per new connection, at a fixed rate")
    u.add_argument("--modes", help="comma-separated modes (default iptables-legacy,iptables-nft)")
    u.add_argument("--services", help="comma-separated service counts")
    u.add_argument("--endpoints", help="endpoints per service (default 10)")
    u.add_argument("--targets", default="last", help="targets of the new connections (default last)")
    u.add_argument("--rounds", help="repetitions, interleaved (default 3)")
    u.add_argument("--seed", help="seed of the order (default 1)")
    u.add_argument("--rate", type=float, default=1000.0, help="new connections per second (default 1000)")
    u.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    u.add_argument("--out", required=True, help="directory for cpu.parquet (may be a sweep's run directory)")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(fn=cmd_cpu)

    k = sub.add_parser("control", help="seconds to program N services, and to add and remove one")
    k.add_argument("--modes", default="iptables-legacy,iptables-nft,nftables,ebpf")
    k.add_argument("--services", default="0,1000,10000,30000,100000")
    k.add_argument("--endpoints", default="10", help="endpoints per service (default 10)")
    k.add_argument("--rounds", default="1", help="repetitions (default 1)")
    k.add_argument("--seed", type=int, default=1)
    k.add_argument("--no-verify", action="store_true", help="skip the SYN that checks each operation")
    k.add_argument("--out", required=True, help="directory for control.parquet")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.set_defaults(fn=cmd_control)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv[1:]
        return args.fn(args)
    except LabkitError as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("labkit: interrupted; the lab was torn down", file=sys.stderr)
        return 130
