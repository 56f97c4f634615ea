"""A run's tables (samples, points, control, ...) in memory, written
atomically into the run directory the runner holds open."""
from __future__ import annotations

import os
import time
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import pandas as pd

from labkit.core.errors import LabkitError, UsageError
from labkit.rundir import schema, store


class Tables:
    """A run's tables in memory, rewritten atomically at the end of every
    block (:meth:`flush_all`, before the block is recorded done), and within
    a long block at most every :attr:`EVERY_S` seconds.  Rewriting on every
    row made a sweep quadratic: the whole samples table was rewritten after
    each point, 0.3 s per point at its start and 1 s at its end.  Rows of a
    block that did not finish are dropped by a resume anyway.
    With ``out`` None nothing is written (a benchmark that only prints).
    Files are written relative to ``fd``, the run directory the runner holds
    open (:mod:`labkit.rundir.safepath`), never through its path.
    ``LABKIT_FLUSH_S`` in the environment overrides :attr:`EVERY_S` (the
    tests set 0, so a kill can land in the middle of a block)."""
    EVERY_S: ClassVar[float] = 30.0

    def __init__(self, out: str | None, names: Iterable[str], fd: int | None = None) -> None:
        self.out = out
        self.fd = fd
        self.chunks: dict[str, list[pd.DataFrame]] = {n: [] for n in names}
        self.dirty: set[str] = set()
        self.flushed = time.monotonic()
        try:
            self.every_s = float(os.environ.get("LABKIT_FLUSH_S", self.EVERY_S))
        except ValueError:
            self.every_s = self.EVERY_S

    def path(self, name: str) -> str:
        assert self.out is not None
        return os.path.join(self.out, name)

    def add(self, name: str, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> None:
        df = rows if isinstance(rows, pd.DataFrame) else \
            pd.DataFrame(list(rows), columns=schema.columns(name))
        self.chunks[name].append(df)
        self.dirty.add(name)
        if time.monotonic() - self.flushed >= self.every_s:
            self.flush_all()

    def flush_all(self) -> None:
        """Write every table that grew since it was last written."""
        for name in sorted(self.dirty):
            self.flush(name)
        self.dirty.clear()
        self.flushed = time.monotonic()

    def frame(self, name: str) -> pd.DataFrame:
        parts = [c for c in self.chunks[name] if len(c)]
        if not parts:
            return pd.DataFrame(columns=schema.columns(name))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def flush(self, name: str) -> None:
        if self.out is not None:
            df = self.frame(name)
            if "verified" in df.columns:  # True/False/None: keep None as None
                df = df.astype({"verified": "object"})
            if self.fd is None:
                raise LabkitError(f"{self.out}: the run directory is not open")
            store.write_table(name, df, dir_fd=self.fd)

    def keep_blocks(self, done: set[int]) -> None:
        """Resume: read every table back, keeping only the rows of ``done``
        blocks; rewrite a table that lost rows."""
        assert self.out is not None and self.fd is not None
        for name in self.chunks:
            p = self.path(name)
            if not store.exists(name, self.fd):
                continue
            try:
                df = store.read_table(name, dir_fd=self.fd)
            except Exception as exc:  # a table a kill left unreadable
                raise UsageError(f"--resume: {p} cannot be read ({type(exc).__name__}: {exc}); "
                                 "move it away to measure its blocks again") from None
            if "block" not in df.columns:
                raise UsageError(f"--resume: {p} has no block column (not written by this labkit)")
            kept = df[df["block"].isin(done)].reset_index(drop=True)
            self.chunks[name] = [kept]
            if len(kept) != len(df):
                self.flush(name)

    def replace(self, name: str, df: pd.DataFrame) -> None:
        """Table ``name`` becomes ``df`` (rows changed in place), written at the next flush."""
        self.chunks[name] = [df]
        self.dirty.add(name)
