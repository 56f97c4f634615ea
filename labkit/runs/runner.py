"""The one experiment runner: sweep, control, cpu and bench all run through it.

An experiment is a list of *blocks*.  A block programs one mode at one
service count in one round, in a brand-new node namespace, does its
measurements and tears the datapath down again.  The runner owns everything
around the blocks, once for every experiment:

* **pre-flight**, before any namespace exists, each check once: the output
  directory (see :func:`prepare_out`), root, the modes' tools and kernel
  features (:meth:`Runner.lacking`, which ``--kernel auto`` also reads), the
  machine's memory for the largest catalog; a refused run leaves nothing;
* the **meta file** (parameters, command, provenance, start and end, the
  blocks done) and the experiment's **tables**, rewritten atomically after
  every block (:class:`Tables`), so a run that stops keeps what it measured;
* the **lab** (one for the whole run), a fresh node per block, and each
  mode's availability tried in the real kernel on its first block;
* **resume**: a block is done when the meta file lists it; a resumed run
  drops the rows of blocks that were not done (a kill mid-block), removes the
  temporary files a killed writer left, and runs the remaining blocks.  A
  finished run is never touched again;
* **disturbed blocks**: once the planned blocks (late rounds aside) are done, a block with a point
  outside what its cell's other rounds allow (:meth:`Experiment.mark_disturbed`,
  :mod:`labkit.core.disturbed`) is measured once more in its round, as a block
  of its own (``remeasure_of``; in the meta file's ``remeasured`` before it runs,
  so a resume runs it too).  Both are kept, flags in the data; once only: one
  outside too is flagged and recorded (``still_disturbed``);
* **late rounds**: the experiment may name a first round from which its
  planned rounds are optional (:meth:`Experiment.late_rounds`: the sweep's
  rounds beyond ``rounds``, of ``mode_rounds`` and ``end_rounds``).  They run
  after the other planned blocks and their re-measurements, one round after
  another while the next is expected to end within the experiment's budget
  (in the meta file's ``late``, each round recorded before it runs; a round
  that would not fit ends them).  Their blocks are judged like settle rounds'
  (flagged, not measured again), so a run's time is bounded by its budget
  once the rounds it must have and their re-measurements are done;
* **settle rounds** (:mod:`labkit.runs.settle`), last: the experiment names
  what its open answers rest on (:meth:`Experiment.settle_cells`, decided once,
  in the meta file's ``settle`` before a round runs) and the runner measures
  it in more rounds while the next is expected to end within the
  experiment's budget (:meth:`Experiment.settle_budget`).

Blocks run in a randomized order within each round (:func:`plan`), so the
slow drift of a shared machine spreads over all modes and counts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, Mapping

from tqdm.auto import tqdm

from labkit import datapaths
from labkit.core.catalog import ServiceCatalog
from labkit.core.errors import LabkitError, Unavailable, UsageError
from labkit.core.kernel_kinds import guest_kind
from labkit.core.validate import clip
from labkit.guests.dispatch import relaunch, same_guest
from labkit.host import load, netns
from labkit.host.limits import check_memory
from labkit.lab.lab import Lab
from labkit.rundir import safepath, schema, store
from labkit.rundir.provenance import environment
from labkit.runs.blocks import Block as Block  # the experiments import it from here
from labkit.runs.blocks import new_remeasures, remeasure_blocks
from labkit.runs.blocks import plan as plan
from labkit.runs.experiment import BlockContext as BlockContext  # the experiments import them from here
from labkit.runs.experiment import Experiment as Experiment
from labkit.runs.experiment import same_what
from labkit.runs.outdir import open_out as open_out  # the experiments and the CLI import them from here
from labkit.runs.outdir import prepare_out, read_meta
from labkit.runs.outdir import release_out as release_out
from labkit.runs.settle import RoundClock
from labkit.runs.tables import Tables as Tables  # the experiments import it from here

if TYPE_CHECKING:  # pragma: no cover
    from labkit.datapaths.base import Datapath

log = logging.getLogger(__name__)


def here() -> str:
    """The kernel this process runs on, as blocks name it."""
    return guest_kind() or "host"




def default_command(kind: str) -> str:
    return f"python -m labkit {kind} " + " ".join(map(shlex.quote, sys.argv[1:]))


class Runner:
    """Runs ``experiment`` into ``out``; ``run()`` returns ``out``.

    With ``resume``, ``experiment`` may be the experiment's class: the run in
    ``out`` continues with its stored parameters; an experiment given with
    ``resume`` must have those very parameters."""

    def __init__(self, experiment: Experiment | type[Experiment], out: str | None, *, resume: bool = False,
                 command: str | None = None, progress: bool = True, only: set[int] | None = None,
                 end_by: float | None = None) -> None:
        self.only = only   # run just these blocks (a segment relaunched in another kernel)
        #: a time (seconds since the epoch) the late and settle rounds must also be expected to
        #: end by (``make report`` passes its own start plus its aim); None: their budget alone
        self.end_by = end_by
        self.kind = experiment.kind
        self.out = prepare_out(out, self.kind, resume)   # checked once, and again under its lock
        self.resume = resume
        self.meta: dict[str, Any] = {}
        if resume:
            self.exp = self._stored(experiment)
        elif isinstance(experiment, Experiment):
            self.exp = experiment
        else:
            raise UsageError(f"a new {self.kind} needs parameters")
        self.command = command or default_command(self.kind)
        self.progress = progress
        self.tables = Tables(self.out, schema.KINDS[self.kind].tables)
        self.dir: safepath.OutDir | None = None   # the run directory, held open while running
        self._lacking: dict[str, str | None] | None = None

    def _stored(self, given: Experiment | type[Experiment]) -> Experiment:
        """The experiment of the run being resumed, from its meta file."""
        assert self.out is not None
        self.meta = read_meta(self.out, self.kind)
        cls = given if isinstance(given, type) else type(given)
        try:
            exp = cls.from_meta(self.meta)
        except (UsageError, TypeError, ValueError, KeyError) as exc:   # stored parameters, checked again
            raise UsageError(f"{self.out} is not a valid labkit run: its params: "
                             f"{clip(str(exc))}") from None
        if isinstance(given, Experiment) and not same_what(given, exp):
            raise UsageError(f"--resume: parameters differ from the run in {self.out}; "
                             f"resume with the stored ones (omit the {self.kind} options)")
        return exp

    def lacking(self) -> dict[str, str | None]:
        """Each of the run's modes: why this host cannot run it, from its tools
        and kernel features (None: it can).  Asked once; ``--kernel auto``, the
        plan of a host+uml sweep and the pre-flight read the same answer."""
        if self._lacking is None:
            self._lacking = {m: datapaths.get(m).unavailable(None) for m in self.exp.modes}
        return self._lacking

    @property
    def meta_path(self) -> str:
        assert self.out is not None
        return os.path.join(self.out, schema.KINDS[self.kind].meta)

    def _write_meta(self, **extra: Any) -> None:
        self.meta.update(extra)
        if self.out is not None:
            if self.dir is None:
                raise LabkitError(f"{self.out}: the run directory is not open")
            store.write_json(schema.KINDS[self.kind].meta, self.meta, dir_fd=self.dir.fd)

    def _preflight(self) -> tuple[list[Block], ServiceCatalog, dict[str, "type[Datapath]"]]:
        """The run's blocks, its largest catalog and the classes of the modes run
        here, once the host has each of those modes and the memory for the
        largest catalog (:class:`Unavailable` otherwise).  Touches no namespace."""
        exp, lacking = self.exp, self.lacking()
        exp.place(lacking)
        blocks = exp.blocks()   # a late round not run stays planned: the ids of what follows keep theirs
        blocks += remeasure_blocks(blocks, self.meta.get("remeasured", []))   # resume: already planned
        blocks += exp.settle_blocks(self.meta.get("settle") or {})   # resume: settle rounds started
        mine = dict.fromkeys(b.mode for b in blocks if self._local(b) and (self.only is None or b.block in self.only))
        for m in mine:
            if lacking[m]:
                raise Unavailable(f"mode {m} cannot run here: {lacking[m]}")
        largest = exp.largest_catalog()
        classes = {m: datapaths.get(m) for m in mine}
        check_memory(classes.values(), largest.services, largest.endpoints, len(largest.ports))
        return blocks, largest, classes

    def run(self) -> str | None:
        if self.resume and self.meta.get("complete"):
            print(f"labkit: {self.out} holds a complete {self.kind} run; nothing to resume", file=sys.stderr)
            return self.out
        netns.require_root()
        blocks, largest, classes = self._preflight()
        if self.out is not None:
            # held open and locked from here on: every file is written relative to it
            self.dir = open_out(self.out, self.kind, self.resume)
            self.tables.fd = self.dir.fd
        ok = False
        try:
            if self.resume and self.dir is not None:   # again, under the lock
                self.meta = read_meta(self.dir.path, self.kind, self.dir.fd)
                if self.meta.get("complete"):
                    print(f"labkit: {self.out} holds a complete {self.kind} run; nothing to resume",
                          file=sys.stderr)
                    ok = True
                    return self.out
            out = self._run(blocks, largest, classes)
            ok = True
            return out
        finally:
            d, self.dir, self.tables.fd = self.dir, None, None
            if d is not None and ok:
                d.close()
            elif d is not None:
                # a run refused before anything was measured leaves no directory behind
                release_out(d, self.kind)

    def _run(self, blocks: list[Block], largest: ServiceCatalog,
             classes: Mapping[str, "type[Datapath]"]) -> str | None:
        exp = self.exp
        done: set[int] = set()
        if self.resume:
            assert self.out is not None and self.dir is not None
            if self.only is None:
                # a killed writer's leftovers; not in a segment run (a guest's blocks): the
                # run on the host is alive and writes (load.json) into the same directory
                store.remove_stale_temps(self.dir.fd)
            ran_in = self.meta.get("kernel_release", self.meta.get("kernel"))   # schema 5 and older: kernel
            if (self.only is None and ran_in and ran_in != platform.release()
                    and self.meta["params"].get("kernel") != "host+uml"):
                # one run, one kernel (a host+uml run keeps each block's kernel in its plan)
                raise UsageError(f"--resume: the run in {self.out} was measured in kernel {ran_in}, "
                                 f"this is {platform.release()}; resume it where it ran")
            done = set(int(b) for b in self.meta.get("blocks_done", []))
            self.tables.keep_blocks(done)
            if self.only is None:   # a segment in another kernel is part of the run, not a resume
                self.meta.setdefault("resumed", []).append(time.time())
        else:
            self.meta = {"schema_version": schema.SCHEMA_VERSION, "kind": self.kind,
                         "experiment": self.kind, "run_id": "", "params": exp.params_dict(),
                         "command": self.command, "started": time.time(), "finished": None,
                         "complete": False, "blocks_done": [], **exp.meta_extra(), **environment()}
        todo = [b for b in blocks if b.block not in done and (self.only is None or b.block in self.only)]
        total = sum(exp.units(b) for b in blocks)
        bar = tqdm(total=total, initial=total - sum(exp.units(b) for b in todo), unit=exp.unit,
                   desc=self.kind, disable=not self.progress, dynamic_ncols=True)
        gauge = self._gauge()
        try:
            with gauge, Lab(**exp.lab_options(largest)) as lab:
                if not self.meta["run_id"]:
                    self.meta["run_id"] = lab.run_id
                if self.end_by is not None and self.only is None:
                    self.meta["end_by"] = self.end_by
                self._write_meta()
                tried: set[str] = set()
                late = self._late_of(blocks) if self.only is None else []
                optional = {b.block for b in late}
                self._blocks([b for b in todo if b.block not in optional], lab, classes, bar, tried)
                if self.only is None:   # the planned blocks done: the disturbed ones once more
                    base = [b for b in blocks if b.block not in optional]
                    again = self._plan_remeasure(blocks, optional)
                    bar.total += sum(exp.units(b) for b in again)
                    self._blocks(again, lab, classes, bar, tried)
                    self._recheck(base + again)
                    late_ran = self._late(late, lab, classes, bar, tried)
                    settled = self._settle(lab, classes, bar, tried)
                    self._judge_extra(base + again + late_ran, late_ran, settled)
        finally:
            self.tables.flush_all()  # what an interrupted block measured, for a look (resume drops it)
            bar.close()
        if self.only is None:
            self._write_meta(finished=time.time(), complete=True,
                             n_rows={t: len(self.tables.frame(t)) for t in self.tables.chunks})
        return self.out

    def _gauge(self) -> Any:
        """The noise gauge of a run started here (not of a segment run in a
        guest: the run on the host gauges it), its samples kept in the run
        directory's ``load.json`` as they come (a resumed run's added to the
        earlier ones)."""
        if self.only is not None or self.out is None or self.dir is None:
            return contextlib.nullcontext()
        fd = self.dir.fd
        try:
            before = list(store.read_json(schema.LOAD, dir_fd=fd).get("samples", [])) if self.resume else []
        except (OSError, ValueError, AttributeError):
            before = []

        def keep(samples: list[dict]) -> None:
            try:
                store.write_json(schema.LOAD, {"interval_s": load.INTERVAL_S, "samples": before + samples},
                                 dir_fd=fd)
            except OSError as exc:   # the gauge never stops a run
                log.info("load.json not written: %s", exc)
        return load.Gauge(on_sample=keep)

    def _blocks(self, todo: list[Block], lab: Lab, classes: Mapping[str, "type[Datapath]"], bar: Any,
                tried: set[str]) -> None:
        """Run ``todo`` in order, each recorded done as it ends."""
        exp, k = self.exp, 0
        while k < len(todo):
            b = todo[k]
            if not self._local(b):   # a segment of blocks for another kernel
                seg = [b]
                while k + len(seg) < len(todo) and todo[k + len(seg)].kernel == b.kernel:
                    seg.append(todo[k + len(seg)])
                bar.set_postfix_str(f"{len(seg)} blocks in {b.kernel}")
                self._elsewhere(b.kernel, seg)
                bar.update(sum(exp.units(x) for x in seg))
                k += len(seg)
                continue
            k += 1
            bar.set_postfix_str(f"{b.mode} {b.services:,} svc r{b.round}")
            log.info("block %d: %s at %s services, round %d", b.block, b.mode, f"{b.services:,}", b.round)
            cls = classes[b.mode]
            lab.reset_node()
            if b.mode not in tried:
                why = cls.unavailable(lab)
                if why:
                    raise Unavailable(f"mode {b.mode} cannot run here: {why}")
                tried.add(b.mode)
                lab.reset_node()
            exp.run_block(BlockContext(lab, b, cls, self.tables, self.meta["run_id"], platform.release(), bar))
            self.tables.flush_all()
            self.meta["blocks_done"].append(b.block)
            self._write_meta()

    def _plan_remeasure(self, blocks: list[Block], late: Collection[int] = ()) -> list[Block]:
        """The planned blocks done (the ``late`` ones aside: they are judged
        later, not measured again): the blocks with a point outside what its
        other rounds allow (flagged in the tables), each planned once more in
        its round with an id of its own (after every planned id, the late
        ones' included), recorded in the meta file before it runs.  On a
        resume the blocks already planned keep their flags and are not
        planned twice."""
        planned = [b for b in blocks if b.remeasure_of < 0 and not b.settle]
        ids = {b.block for b in planned} - set(late)
        entries = self.meta.setdefault("remeasured", [])
        judge = ids - {int(e["of"]) for e in entries}
        new = new_remeasures(planned, self.exp.mark_disturbed(self.tables, ids, judge), entries)
        self.tables.flush_all()
        if new:
            log.warning("disturbed blocks, measured again: %s", ", ".join(f"{e['of']} as {e['block']}" for e in new))
        entries.extend(new)
        self._write_meta()
        return remeasure_blocks(planned, new)

    def _recheck(self, blocks: list[Block]) -> None:
        """Judge each re-measurement against the other rounds (the old block
        replaced by it); one outside too is flagged and recorded, not measured again."""
        entries = self.meta.get("remeasured", [])
        again = {int(e["block"]) for e in entries}
        still = self.exp.mark_disturbed(self.tables, self._peers(blocks), again)
        entries[:] = [{**e, "still_disturbed": int(e["block"]) in still} for e in entries]
        self.tables.flush_all()
        self._write_meta()

    def _peers(self, blocks: list[Block]) -> set[int]:
        """The blocks a point is judged among: the planned ones, each disturbed
        one replaced by its re-measurement (settle rounds' blocks aside)."""
        entries = self.meta.get("remeasured", [])
        return ({b.block for b in blocks if b.remeasure_of < 0 and not b.settle}
                - {int(e["of"]) for e in entries} | {int(e["block"]) for e in entries})

    def _settle(self, lab: Lab, classes: Mapping[str, "type[Datapath]"], bar: Any,
                tried: set[str]) -> list[Block]:
        """Settle rounds (:mod:`labkit.runs.settle`): what they measure decided
        once, from the run so far, and kept in the meta file's ``settle``; then
        one round after another while it fits (:meth:`_while_they_fit`), each
        round recorded as started before it runs.  Its blocks judged against
        the other rounds afterwards: flagged, not measured again."""
        exp = self.exp
        budget_s, most = exp.settle_budget()
        if most <= 0 or self.out is None:
            return []
        budget_s, by = self._budget(budget_s)
        s = self.meta.get("settle")
        if s is None:
            t0 = time.time()
            bar.set_postfix_str("settle: the claims so far")
            why = ""
            try:
                cells = exp.settle_cells(self.out)
            except Exception as exc:   # noqa: BLE001  (what was measured stands; the run completes)
                log.warning("settle rounds: the claims could not be put to the run: %s", exc)
                cells, why = [], f"the claims could not be put to the run: {clip(str(exc), 200)}"
            s = {"cells": cells, "rounds": 0, "budget_s": budget_s, "most": most, "end_by": by,
                 "decided_at_s": round(t0 - float(self.meta["started"]), 1),
                 "analysis_s": round(time.time() - t0, 1), "stopped": why, "round_s": []}
            self._write_meta(settle=s)
        ran = exp.settle_blocks(s)

        def rounds() -> Iterator[tuple[int, list[Block]]]:
            while s["cells"] and s["rounds"] < most:
                yield s["rounds"], exp.settle_blocks({**s, "rounds": s["rounds"] + 1})[len(exp.settle_blocks(s)):]

        def start(r: int, blocks: list[Block]) -> None:
            s["rounds"] += 1
            bar.total += sum(exp.units(b) for b in blocks)

        every = self._while_they_fit("settle", s, rounds(), budget_s, start, lambda r: False, lab, classes, bar,
                                     tried, ran)
        if every:
            s["stopped"] = s["stopped"] or ("every settle round ran" if s["cells"] else "no open claim to settle")
        if s["cells"]:
            log.warning("settle rounds: %d of %d (%s)", s["rounds"], most, s["stopped"])
        self._write_meta()
        return ran

    def _while_they_fit(self, key: str, rec: dict, rounds: Iterable[tuple[int, list[Block]]], budget_s: float,
                        start: Callable[[int, list[Block]], None], started: Callable[[int], bool], lab: Lab,
                        classes: Mapping[str, "type[Datapath]"], bar: Any, tried: set[str],
                        ran: list[Block]) -> bool:
        """Extra rounds (late or settle), one after another while the next is
        expected to end within ``budget_s`` from the run's start: its estimate
        from the run's own blocks, scaled by how the last round compared with
        its own (:class:`~labkit.runs.settle.RoundClock`).  A round not yet
        ``started`` asks the budget; one that fits is ``start``-ed and recorded
        in the meta file before it runs (a resumed run runs a started round's
        blocks not done, without asking).  The first that does not fit ends
        them, the reason in ``rec["stopped"]``.  Appends the rounds' blocks to
        ``ran``; True when every round ran."""
        clock, done = RoundClock(), {int(b) for b in self.meta.get("blocks_done", [])}
        for r, blocks in rounds:
            estimate = self.exp.settle_seconds(blocks, self.tables, self.meta)
            if not started(r):
                expect, left = clock.expect(estimate), float(self.meta["started"]) + budget_s - time.time()
                if rec["stopped"] or expect > left:
                    rec["stopped"] = rec["stopped"] or (
                        f"round {r + 1} would take about {expect:.0f} s, {max(left, 0.0):.0f} s of the "
                        f"{budget_s / 60:.3g} min budget were left")
                    return False
                start(r, blocks)
                self._write_meta()
            t0 = time.time()
            self._blocks([b for b in blocks if b.block not in done], lab, classes, bar, tried)
            self.meta[key] = rec   # a guest's segment reads the meta file back into a new dict: the record goes on
            took = time.time() - t0
            rec["round_s"].append(round(took, 1))
            clock.took(estimate, took)
            ran += blocks
        return True

    def _budget(self, budget_s: float) -> tuple[float, bool]:
        """An experiment's budget (seconds from the run's start), cut to
        ``end_by`` when that comes first; and whether it did."""
        if self.end_by is None:
            return budget_s, False
        to_end = self.end_by - float(self.meta["started"])
        return (to_end, True) if to_end < budget_s else (budget_s, False)

    def _late_of(self, blocks: list[Block]) -> list[Block]:
        """The planned blocks of the late rounds (:meth:`Experiment.late_rounds`)."""
        first = (self.exp.late_rounds() or (None, 0.0))[0]
        if first is None:
            return []
        return [b for b in blocks if b.remeasure_of < 0 and not b.settle and b.round >= first]

    def _late(self, late: list[Block], lab: Lab, classes: Mapping[str, "type[Datapath]"], bar: Any,
              tried: set[str]) -> list[Block]:
        """Late rounds (:meth:`Experiment.late_rounds`): one round after another
        while it fits (:meth:`_while_they_fit`), each recorded in the meta
        file's ``late`` before it runs; the first round that would not fit ends
        them (its blocks and the later ones taken off the progress bar), and a
        resumed run skips what was skipped.  Returns the late blocks run."""
        if not late:
            return []
        exp, (first, budget_s) = self.exp, self.exp.late_rounds() or (0, 0.0)
        budget_s, by = self._budget(budget_s)
        rec = self.meta.setdefault("late", {"first": first, "budget_s": budget_s, "rounds": [], "round_s": [],
                                            "stopped": "", "end_by": by})
        done = {int(b) for b in self.meta.get("blocks_done", [])}
        ran: list[Block] = []
        order = sorted({b.round for b in late})
        if self._while_they_fit("late", rec, ((r, [b for b in late if b.round == r]) for r in order), budget_s,
                                lambda r, blocks: rec["rounds"].append(r), lambda r: r in rec["rounds"], lab,
                                classes, bar, tried, ran):
            rec["stopped"] = rec["stopped"] or "every late round ran"
        else:
            r = next(r for r in order if r not in rec["rounds"])
            bar.total -= sum(exp.units(b) for b in late if b.round >= r and b.block not in done)
            bar.refresh()
            log.warning("late rounds: from round %d not run (%s)", r + 1, rec["stopped"])
        self._write_meta()
        return ran

    def _judge_extra(self, blocks: list[Block], late: list[Block], settled: list[Block]) -> None:
        """Judge the late and settle rounds' blocks against the other rounds
        (among the planned blocks, the re-measurements in place of what they
        re-measure): flagged, not measured again; the flagged ones in the meta
        file's ``late`` and ``settle`` ``disturbed``."""
        mine = {b.block for b in late + settled}
        if not mine:
            return
        flagged = self.exp.mark_disturbed(self.tables, self._peers(blocks) | mine, mine)
        self.tables.flush_all()
        for key, part in (("late", late), ("settle", settled)):
            if part and isinstance(self.meta.get(key), dict):
                self.meta[key]["disturbed"] = sorted(flagged & {b.block for b in part})
        self._write_meta()

    def _local(self, b: Block) -> bool:
        return not b.kernel or b.kernel == here()

    def _elsewhere(self, kernel: str, seg: list[Block]) -> None:
        """Run the blocks ``seg`` in the other kernel ``kernel`` (labkit relaunched
        there resumes this run for just those blocks), then take its rows back."""
        if here() != "host" or self.out is None:
            raise LabkitError(f"blocks for {kernel} can only be run from the host, into a run directory")
        same_guest(kernel, [str(g.get("kernel_release") or "") for g in self.meta.get("guests", [])
                            if isinstance(g, dict) and g.get("backend") == kernel], self.out,
                   what=f"the {kernel} blocks of the run")
        self._write_meta()
        ids = ",".join(str(b.block) for b in seg)
        res = relaunch(kernel, self.kind, ["--resume", "--only-blocks", ids, "--quiet"], self.out, self.kind,
                       record=False)
        self.meta = read_meta(self.out, self.kind, self.dir.fd if self.dir else None)
        self.meta.setdefault("guests", []).append(res.facts)
        missing = [b.block for b in seg if b.block not in self.meta.get("blocks_done", [])]
        if missing:
            raise LabkitError(f"{kernel} did not finish blocks {missing}: {res.stderr.strip()[-300:]}")
        self.tables.keep_blocks(set(int(x) for x in self.meta["blocks_done"]))
        self._write_meta()
