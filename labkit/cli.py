"""``python -m labkit`` / ``labkit``: doctor, sweep, control, cpu, bench, report, clean.

Every run command (sweep, control, cpu, bench program) goes one way, :func:`_run`,
through the one experiment runner (:mod:`labkit.runs.runner`): the same
pre-flight, output directory rules, ``--resume`` and ``--kernel host|vm|auto``.
The sweep's options and their defaults in the help come from
:class:`~labkit.runs.params.SweepParams`.  Bad input gets
one line on stderr and exit status 2; a machine limit (a missing kernel
feature, too little memory) exit status 3; a system error no check named first
(disk full, permission denied, a read-only file system: any OSError) one line
and exit status 1; Ctrl-C or SIGTERM one line and exit status 130.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import shlex
import signal
import sys
from importlib import metadata
from typing import Any, NoReturn

from labkit.core.errors import LabkitError, UsageError
from labkit.core.modes import IPVS_SCHEDULERS
from labkit.core.modes import NAMES as MODE_NAMES
from labkit.core.validate import clip, names, number, short, split, whole
from labkit.guests.dispatch import KERNELS, choose_kernel, in_guest, relaunch
from labkit.host import netns
from labkit.host.clean import clean
from labkit.lab.lab import Lab
from labkit.rundir import safepath, schema
from labkit.rundir.store import read_table
from labkit.runs.bench import BenchProgram, bench_nft_change, bench_send, summarize_program
from labkit.runs.control import Control
from labkit.runs.cpu import Cpu
from labkit.runs.doctor import doctor
from labkit.runs.estimate import estimate_for, save_rates
from labkit.runs.outdir import read_meta
from labkit.runs.params import FILE_ONLY, PARAMETERS, TARGETS, SweepParams
from labkit.runs.runner import Experiment, Runner, open_out, release_out
from labkit.runs.sweep import Sweep, summary_text

#: the sweep's options: every parameter but those given in a parameter file only
SWEEP_OPTIONS = tuple(n for n in PARAMETERS if n not in FILE_ONLY)

log = logging.getLogger("labkit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, a long value quoted short
        raise UsageError(f"{self.prog}: " + re.sub(r"'([^']{60})[^']+'", r"'\1...'", message))


def _value_options(p: argparse.ArgumentParser) -> set[str]:
    """The options of ``p`` and its subcommands that take a value."""
    out: set[str] = set()
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out |= _value_options(sub)
        elif a.option_strings and a.nargs != 0:
            out |= set(a.option_strings)
    return out


def _glue_dash_values(argv: list[str], options: set[str]) -> list[str]:
    """``--services -5,100`` as ``--services=-5,100``: argparse takes a value
    that starts with "-" (other than a plain negative number) for an option
    and says only "expected one argument"; glued, the value is checked and
    refused by name."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + argv[i:]
        if a in options and i + 1 < len(argv) and re.match(r"-[0-9.]", argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _one_line(text: str) -> str:
    """An error message as one bounded line."""
    return clip(" ".join(str(text).split()), 2000)


def _os_error(exc: OSError) -> str:
    """An OSError (disk full, permission denied, read-only file system...) in words."""
    name = errno.errorcode.get(exc.errno or 0)
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    return f"{what}{f' ({name})' if name else ''}{where}"


def _interrupted(since: tuple[int, int] = (0, 0)) -> str:
    """What a Ctrl-C or SIGTERM left: "torn down" only when this command built a
    lab and took every lab it built down again (``since``: the labs opened and
    torn down before it began)."""
    opened, torn_down = Lab.opened - since[0], Lab.torn_down - since[1]
    if not opened:
        return "labkit: interrupted"
    if torn_down >= opened:
        return "labkit: interrupted; the lab was torn down"
    return "labkit: interrupted before the lab was torn down; run `python -m labkit clean`"


def _sigterm(signum: int, frame: Any) -> None:  # unwind context managers: teardown runs
    raise KeyboardInterrupt(f"signal {signum}")


def _command(name: str, args: argparse.Namespace) -> str:
    return f"python -m labkit {name} " + " ".join(shlex.quote(a) for a in args.argv)


def _elsewhere(args: argparse.Namespace, kernel: str | None, lacking: dict[str, str | None], kind: str) -> bool:
    """Relaunch the command in another kernel when ``--kernel`` asks for it
    (``lacking``: each mode, and why the host cannot run it); True when it ran there."""
    if kernel is not None and kernel not in KERNELS:
        raise UsageError(f"kernel must be one of {', '.join(KERNELS)}, got {short(kernel)}")
    if kernel is None and not args.resume:
        kernel = "auto"   # one default for every run command: the host when it runs every mode
    where, why = choose_kernel(kernel, lacking, args.out, args.resume)
    if where == "host":
        return False
    print(f"labkit: {why}", file=sys.stderr)
    # this process holds the run directory and its lock for the guest's run (the guest,
    # writing through hostfs, takes no lock of its own: LABKIT_GUEST)
    with open_out(args.out, kind, args.resume) as d:
        try:
            res = relaunch(where, args.cmd, args.argv, d.path, kind)
        except BaseException:
            release_out(d, kind)   # a signal during the guest's boot leaves no empty --out it made
            raise
    print(f"wrote {args.out} ({where} kernel {res.facts['kernel_release']}, {res.facts['accel']}, "
          f"boot {res.facts['boot_s']:.1f} s)")
    return True


def _run(args: argparse.Namespace, exp: Experiment | None, exp_cls: type[Experiment], kernel: str | None,
         only: set[int] | None = None) -> Runner | None:
    """The one way sweep, control, cpu and bench run: the runner of a new run
    (``exp``) or of the one ``--resume`` continues (``exp`` None: its stored
    parameters; else they must be the same), which checks ``--out`` once;
    root; the kernel (``--kernel``, from what the runner found the host lacks);
    the run, here or relaunched in that kernel (then None)."""
    runner = Runner(exp if exp is not None else exp_cls, args.out, resume=args.resume,
                    command=_command(args.cmd, args), progress=not args.quiet, only=only,
                    end_by=getattr(args, "end_by", None))
    if isinstance(runner.exp, Sweep) and only is None:   # a guest's segment never settles
        runner.exp.settle_with = _unsettled
    netns.require_root()
    if kernel != "host+uml" and _elsewhere(args, kernel, runner.lacking(), runner.kind):
        return None
    runner.run()
    return runner


def _unsettled(run_dir: str) -> list[dict[str, Any]]:
    """What a sweep's open claims rest on, for its settle rounds
    (:func:`labkit.analysis.settle.unsettled`).  Imported when asked, not at
    the top: the analysis pulls scipy.stats, which a guest's segment run
    (a fresh interpreter over hostfs) never needs."""
    from labkit.analysis.settle import unsettled  # noqa: PLC0415  (see above)
    return unsettled(run_dir)


# ---------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    rows = doctor()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["mode"]) for r in rows)
    for r in rows:
        where = r["where"] or "none"
        print(f"{r['mode']:<{w}}  {where:<5}  {r['reason'] or r['summary']}")
    return 0


def _sweep_params(args: argparse.Namespace) -> SweepParams:
    over = {k: getattr(args, k) for k in SWEEP_OPTIONS}
    if args.params:
        return SweepParams.from_yaml(args.params, **over)
    return SweepParams.from_dict({k: v for k, v in over.items() if v is not None})


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.resume:
            raise UsageError("sweep: --dry-run plans a new run; it does not take --resume")
        print(estimate_for(_sweep_params(args)).text())
        return 0
    if not args.out:
        raise UsageError("labkit sweep: the following arguments are required: --out (or --dry-run)")
    # --kernel says where to run, not what: a resumed run takes it without other options
    options_given = args.params is not None or any(getattr(args, k) is not None for k in SWEEP_OPTIONS
                                                   if k != "kernel")
    params = _sweep_params(args) if (options_given or not args.resume) else None
    only = {whole(b, "only-blocks", 0, 10**9) for b in split(args.only_blocks, "only-blocks")} \
        if args.only_blocks else None
    if args.end_by is not None:
        with contextlib.suppress(ValueError):
            args.end_by = float(args.end_by)
        args.end_by = number(args.end_by, "--end-by (seconds since the epoch)", 1e9, 1e11)
    # a resume goes back to the kernel the run was planned for; --kernel may only agree
    kernel = args.kernel if args.resume else (params.kernel if params else "host")
    runner = _run(args, Sweep(params) if params else None, Sweep, kernel, only)
    if runner is None:   # measured in another kernel: the rates are kept here, with its meta
        if only is None:
            _keep_rates(args.out, None)
        return 0
    out = runner.out
    assert out is not None   # --out is required
    if only is None:   # a segment run in another kernel reports to its parent instead
        with safepath.open_dir(out, "--out", create=False) as d:   # read back through a checked path
            print(summary_text(read_table(schema.POINTS, dir_fd=d.fd)))
        if not in_guest():   # the host process keeps them, once it knows the guest's kernel
            _keep_rates(out, runner.meta)
    print(f"wrote {out}/{schema.SAMPLES}, {schema.POINTS}, {schema.CONTROL}, {schema.META}")
    return 0


def _keep_rates(out: str, meta: dict[str, Any] | None) -> None:
    """This machine's rates of a finished sweep, for the next --dry-run (a
    cache file; never fatal); ``meta`` None: read from ``out``."""
    try:
        save_rates(out, meta if meta is not None else read_meta(out, "sweep"))
    except (OSError, ValueError, KeyError, UsageError) as exc:
        log.info("rates not kept for --dry-run: %s", exc)


def cmd_params(args: argparse.Namespace) -> int:
    """Validate a parameter file exactly as ``sweep --params`` does; print it and
    what a sweep of it would cost."""
    p = SweepParams.from_yaml(args.file)
    print(json.dumps(p.to_dict(), indent=2))
    print(estimate_for(p).text())
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    exp = None if args.resume else Control(
        split(args.modes, "modes"), split(args.services, "services"), endpoints=args.endpoints,
        rounds=args.rounds, seed=args.seed, verify=not args.no_verify)
    runner = _run(args, exp, Control, args.kernel)
    if runner is None:
        return 0
    print(f"wrote {runner.out}/{schema.CONTROL}, {schema.CONTROL_META}")
    return 0


def cmd_cpu(args: argparse.Namespace) -> int:
    exp = None
    if not args.resume:
        over = {k: getattr(args, k) for k in ("modes", "services", "endpoints", "targets", "rounds",
                                              "seed")}
        params = SweepParams.from_dict({k: v for k, v in over.items() if v is not None})
        exp = Cpu(params, rate=args.rate, seconds=args.seconds)
    runner = _run(args, exp, Cpu, args.kernel)
    if runner is None:
        return 0
    print(f"wrote {runner.out}/{schema.CPU}, {schema.CPU_META}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "send":
        print(json.dumps(bench_send(args.seconds, args.repeat)))
        return 0
    if args.what == "nft-change":
        for row in bench_nft_change(args.services, args.endpoints, args.repeat):
            print(json.dumps(row))
        return 0
    exp = None if args.resume else BenchProgram(
        names(args.modes, "modes", MODE_NAMES), whole(args.services, "services", 0, 1_000_000),
        args.endpoints, args.repeat)
    # without --out nothing is written, nothing relaunched: it runs here
    runner = _run(args, exp, BenchProgram, args.kernel if args.out else "host")
    if runner is None:
        return 0
    for row in summarize_program(runner.tables.frame(schema.BENCH)):
        print(json.dumps(row))
    return 0


# The report commands import their modules when they run, not at the top: labkit.report pulls
# in papermill, nbconvert and nbformat (whose schema validator builds lark grammars on import),
# 2.6 s of the 3.9 s `import labkit.cli` takes on this host and 9 of 19.5 s inside user-mode
# Linux, where every sweep segment starts labkit anew; a sweep never needs them.
def cmd_report(args: argparse.Namespace) -> int:
    from labkit.report.build import build_report  # noqa: PLC0415  (see above)
    path = build_report(args.run_dir, out_dir=args.out_dir, budget_us=args.budget_us,
                        budget_frac=args.budget_frac)
    print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from labkit.report.build import check_run_meta, run_kind  # noqa: PLC0415  (see cmd_report)
    from labkit.report.compare import build_compare  # noqa: PLC0415
    seen: dict[str, str] = {}
    for d in args.run_dirs:
        key = os.path.realpath(d)
        if key in seen:
            raise UsageError(f"compare: {short(seen[key])} and {short(d)} are the same run directory; "
                             "compare different runs")
        seen[key] = d
        kind = run_kind(d) if os.path.isdir(d) else "sweep"
        if kind != "sweep":
            raise UsageError(f"compare: {short(d)} is a {kind} run; compare takes sweep runs "
                             f"(`labkit report {short(d)}` shows a {kind} run)")
        check_run_meta(os.path.abspath(d))
    path = build_compare(args.run_dirs, args.out_dir)
    print(f"wrote {path} and {os.path.join(os.path.dirname(path), 'compare.csv')}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    report = clean(force=args.force, live=args.all)
    for line in report.removed:
        print(f"removed {line}")
    for line in report.kept:
        print(f"left alone: {line}")
    if not report.removed and not report.kept:
        print("nothing of labkit's was left on this machine")
    return 0


# ---------------------------------------------------------------------------

def default(name: str) -> str:
    """The sweep parameter ``name``'s default as the help and the command line
    write it (``0,1,10``; a whole float without its ".0")."""
    def one(v: Any) -> str:
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    v = getattr(SweepParams(), name)
    return ",".join(map(one, v)) if isinstance(v, list) else one(v)


def _run_options(p: argparse.ArgumentParser, out_help: str, out_required: bool = True) -> None:
    p.add_argument("--out", required=out_required, help=out_help)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out with its stored parameters")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="labkit", description=(
        "Measure Kubernetes service datapaths (kube-proxy iptables legacy/nft, nftables, IPVS, "
        "eBPF) on this kernel, inside network namespaces it creates and removes."))
    ap.add_argument("--version", action="version", version=f"labkit {metadata.version('labkit')}")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="log what labkit does to stderr (-v: steps, -vv: every kernel command)")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser, metavar="COMMAND")

    d = sub.add_parser("doctor", help="which modes run here, and why not (as root: tried for real in a "
                                      "scratch lab that is removed again)")
    d.add_argument("--json", action="store_true", help="one JSON object per mode instead of the table "
                   "(as root, each mode is tried in a scratch lab: namespaces made and removed again)")
    d.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("sweep", help="measure first-packet latency across service counts")
    s.add_argument("--params", help="YAML parameter file (params/*.yaml); options override it")
    s.add_argument("--modes", help=f"comma-separated modes (see `labkit doctor`; default {default('modes')})")
    s.add_argument("--services", help=f"comma-separated service counts (default {default('services')}; "
                                      "0 = the empty table)")
    s.add_argument("--endpoints", help=f"endpoints per service (default {default('endpoints')})")
    s.add_argument("--ports", help=f"service ports (default {default('ports')})")
    s.add_argument("--targets", help=f"{','.join(TARGETS)} (default {default('targets')})")
    s.add_argument("--probes", help=f"probes per point (default {default('probes')}: p99 needs 500)")
    s.add_argument("--rounds", help=f"repetitions of every point, interleaved (default {default('rounds')})")
    s.add_argument("--warmup", help=f"unrecorded probes before each point (default {default('warmup')})")
    s.add_argument("--seed", help=f"seed of the order and the random targets (default {default('seed')})")
    s.add_argument("--timeout", type=float, help=f"seconds to wait for an answer (default {default('timeout')})")
    s.add_argument("--kernel", help=f"host, uml, vm, auto (default {default('kernel')}: the host, else user-mode "
                                    "Linux, else the VM, whichever runs every mode; labkit's user-mode Linux "
                                    "runs all of them) or host+uml (each mode on the host where it runs there, "
                                    "else in user-mode Linux; iptables and nftables, native in both, in both: "
                                    "they relate the kernels)")
    s.add_argument("--ipvs-scheduler", dest="ipvs_scheduler",
                   help=f"IPVS scheduler: {', '.join(IPVS_SCHEDULERS)} (default {default('ipvs_scheduler')})")
    s.add_argument("--end-by", dest="end_by", metavar="SECONDS",
                   help="a time (seconds since the epoch, e.g. $(date -d '+25 min' +%%s)) the late and settle "
                        "rounds must also be expected to end by, besides settle_minutes: `make report` passes "
                        "its own start plus REPORT_MINUTES (30) less 90 s for the report")
    s.add_argument("--only-blocks", dest="only_blocks", help=argparse.SUPPRESS)  # a segment run in another kernel
    s.add_argument("--probe-kinds", dest="probe_kinds", help=f"probe kinds (default {default('probe_kinds')})")
    s.add_argument("--pacing", help="probe rates per second, Poisson gaps; 0 = back to back, each when the "
                                    f"previous one was answered (default {default('pacing')}; e.g. 0,1000 measures "
                                    "both)")
    s.add_argument("--service-cidr", dest="service_cidr", help=f"VIP range (default {default('service_cidr')})")
    s.add_argument("--endpoint-cidr", dest="endpoint_cidr",
                   help=f"endpoint range (default {default('endpoint_cidr')})")
    _run_options(s, "run directory to write (required unless --dry-run)", out_required=False)
    s.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the points, probes and estimated duration (from this machine's last sweep's "
                        "rates, else the reference run's) and stop: nothing is measured or written")

    pa = sub.add_parser("params", help="check a parameter file as sweep would; print the parameters, "
                                       "the point count and the estimated duration")
    pa.add_argument("file", help="a YAML parameter file (params/*.yaml)")
    pa.set_defaults(fn=cmd_params)
    s.set_defaults(fn=cmd_sweep)

    k = sub.add_parser("control", help="seconds to program N services, and to add and remove one")
    k.add_argument("--modes", default="iptables-legacy,iptables-nft,nftables,ebpf",
                   help="comma-separated modes (default iptables-legacy,iptables-nft,nftables,ebpf)")
    k.add_argument("--services", default="0,1000,10000",
                   help="comma-separated service counts (default 0,1000,10000; 30,000 and 100,000 take "
                        "minutes per iptables sync: ask for them)")
    k.add_argument("--endpoints", default="10", help="endpoints per service (default 10)")
    k.add_argument("--rounds", default="1", help="repetitions (default 1)")
    k.add_argument("--seed", default="1", help="seed of the order and the changed services (default 1)")
    k.add_argument("--kernel", help="host, uml, vm or auto (default auto: the host when it runs every mode, "
                   "else user-mode Linux; a resumed run stays in its kernel)")
    k.add_argument("--no-verify", action="store_true", help="skip the SYN that checks each operation")
    _run_options(k, "directory for control.parquet")
    k.set_defaults(fn=cmd_control)

    u = sub.add_parser("cpu", help="CPU time the node spends per new connection, at a fixed rate")
    u.add_argument("--modes", help=f"comma-separated modes (default {default('modes')})")
    u.add_argument("--services", help=f"comma-separated service counts (default as sweep's: {default('services')})")
    u.add_argument("--endpoints", help=f"endpoints per service (default {default('endpoints')})")
    u.add_argument("--targets", default="last", help="targets of the new connections (default last)")
    u.add_argument("--rounds", help=f"repetitions, interleaved (default {default('rounds')})")
    u.add_argument("--seed", help=f"seed of the order (default {default('seed')})")
    u.add_argument("--rate", type=float, default=1000.0, help="new connections per second (default 1000)")
    u.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    u.add_argument("--kernel", help="host, uml, vm or auto (default auto: the host when it runs every mode, "
                   "else user-mode Linux; a resumed run stays in its kernel)")
    _run_options(u, "directory for cpu.parquet (may be a sweep's run directory)")
    u.set_defaults(fn=cmd_cpu)

    b = sub.add_parser("bench", help="benchmarks: programming time, probe send capacity, "
                                     "where one nftables change spends its time")
    b.add_argument("what", choices=["program", "send", "nft-change"],
                   help="program: seconds and memory to program N services; send: probe send capacity; "
                        "nft-change: where one nftables change spends its time")
    b.add_argument("--modes", default="iptables-legacy,iptables-nft",
                   help="program: comma-separated modes (default iptables-legacy,iptables-nft)")
    b.add_argument("--services", default="10000", help="service count (default 10000)")
    b.add_argument("--endpoints", default="10", help="endpoints per service (default 10)")
    b.add_argument("--repeat", default="3", help="repetitions (default 3)")
    b.add_argument("--seconds", type=float, default=2.0, help="send: seconds to send (default 2)")
    b.add_argument("--kernel", help="host, uml, vm or auto (default auto: the host when it runs every mode, "
                   "else user-mode Linux; a resumed run stays in its kernel)")
    _run_options(b, "program: also write bench.parquet there (resumable)", out_required=False)
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("report", help="analyse a run directory into report.html")
    r.add_argument("run_dir", help="a sweep's run directory")
    r.add_argument("--out", "--out-dir", dest="out_dir",
                   help="where to write (default: the run directory; --out-dir is the older name)")
    r.add_argument("--budget-us", type=float, default=10.0, help="latency budget in us (default 10)")
    r.add_argument("--budget-frac", type=float, default=0.10,
                   help="budget as a fraction of one request on the other mode's path: its http-new "
                        "median, else its p50 at the smallest count (default 0.10)")
    r.set_defaults(fn=cmd_report)

    m = sub.add_parser("compare", help="one report across runs (kernels, machines, before/after)")
    m.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories; the first "
                                                                 "is the reference")
    m.add_argument("--out", "--out-dir", dest="out_dir", required=True,
                   help="where compare.html and compare.csv go (--out-dir is the older name)")
    m.set_defaults(fn=cmd_compare)

    c = sub.add_parser("clean", help="remove what crashed or killed runs left behind")
    c.add_argument("--force", action="store_true",
                   help="also remove names of labkit's exact pattern that no state file records "
                        "(never another user's files, never a live run's)")
    c.add_argument("--all", action="store_true",
                   help="also stop and remove runs that are still alive (their lock is held)")
    c.set_defaults(fn=cmd_clean)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    labs = (Lab.opened, Lab.torn_down)
    try:
        parser = build_parser()
        argv = _glue_dash_values(argv, _value_options(parser))
        args = parser.parse_args(argv)
        if not args.cmd:   # bare `labkit`: the commands, not an error about a missing one
            parser.print_help(sys.stderr)
            return 2
        args.argv = argv[argv.index(args.cmd) + 1:]   # the subcommand's own arguments
        if args.verbose:
            logging.basicConfig(level=logging.INFO if args.verbose == 1 else logging.DEBUG,
                                format="labkit: %(name)s: %(message)s", stream=sys.stderr)
        return int(args.fn(args))
    except LabkitError as exc:
        print(f"labkit: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:   # ENOSPC, EACCES, EROFS... where no check named it first: exit 1
        print(f"labkit: error: {_one_line(_os_error(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted(labs), file=sys.stderr)
        return 130
