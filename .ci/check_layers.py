#!/usr/bin/env python3
"""labkit's structure check (run by CI): no import cycles, only allowed arrows.

Each sub-package of labkit/ is one layer; a module may import its own layer
and the layers ``ALLOWED`` lists for it (the arrows docs/architecture.md
draws), never another: ``analysis`` is pure, so it may not import ``host``
or ``lab`` although they sit below it.  Imports are read with ``ast`` at
every depth (inside functions and ``TYPE_CHECKING`` blocks too), so a cycle
cannot hide in a function body.  Exit status 1 on any violation.

usage: python .ci/check_layers.py [labkit]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

#: lowest first; the top-level modules (cli, __main__, __init__) sit above all
LAYERS = ["core", "host", "lab", "datapaths", "probes", "rundir", "guests", "runs",
          "analysis", "report"]
TOP = len(LAYERS)

#: what each layer may import besides itself (docs/architecture.md draws these arrows);
#: the top (cli) may import every layer
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "host": {"core"},
    "lab": {"core", "host"},
    "datapaths": {"core", "host", "lab"},
    "probes": {"core", "host", "lab"},
    "rundir": {"core"},
    "guests": {"core", "host", "rundir"},
    "runs": {"core", "host", "lab", "datapaths", "probes", "rundir", "guests"},
    "analysis": {"core", "rundir"},
    "report": {"core", "rundir", "analysis"},
    "top": set(LAYERS),
}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return TOP
    return LAYERS.index(parts[1])


def imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    pkg = mod.split(".")[0]
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for n in names:
            if n.split(".")[0] != pkg:
                continue
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod and not mod.startswith(n + "."):
                out.add(n)
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "labkit").resolve()
    known = modules(root)
    edges = {m: imports(m, f, known) for m, f in known.items()}
    bad = 0
    for comp in cycles(edges):
        print("cycle: " + ", ".join(comp))
        bad += 1
    names = LAYERS + ["top"]
    for m in sorted(edges):
        for t in sorted(edges[m]):
            a, b = names[layer(m)], names[layer(t)]
            if a != b and b not in ALLOWED[a]:
                print(f"import not allowed: {m} ({a}) imports {t} ({b}); {a} may import "
                      f"{', '.join(sorted(ALLOWED[a])) or 'nothing of labkit'}")
                bad += 1
    for m in sorted(known):
        parts = m.split(".")
        if len(parts) == 2 and parts[1] not in ("cli", "__main__") and known[m].name != "__init__.py":
            print(f"module outside a layer: {m} (put it in one of {', '.join(LAYERS)})")
            bad += 1
    n_cycles = len(cycles(edges))
    print(f"{len(known)} modules, {sum(map(len, edges.values()))} imports, "
          f"{n_cycles} cycles, {bad - n_cycles} layer violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
