"""The package's structure drawn from its own imports: modules, import arrows, cycles, layers, longest functions.

    python scripts/house.py [--json]

Arrows count every `import`/`from ... import` of an edgeslim module by another, lazy imports inside functions
included (a lazy import is still a dependency). A cycle is a strongly connected group of two or more modules.
`tests/test_architecture.py` asserts on the same figures.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "edgeslim"


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for p in sorted((src / PKG).rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the edgeslim modules it imports (a `from pkg import name` counts `pkg.name` when that is a module)."""
    mods = modules(src)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(m, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t.startswith(PKG):
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted. A package's `__init__` importing its
    own submodules is not a cycle unless a submodule imports the package back (the registry pattern does: those
    imports are of names defined before the submodules load, so the edge from a submodule to its own parent
    package is left out)."""
    g = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def long_functions(path: Path, limit: int = 80) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function in `path` longer than `limit` lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def walk(node, prefix=""):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = ch.end_lineno - ch.lineno + 1
                if n > limit:
                    out.append((prefix + ch.name, n))
                walk(ch, prefix + ch.name + ".")
            elif isinstance(ch, ast.ClassDef):
                walk(ch, prefix + ch.name + ".")
    walk(tree)
    return sorted(out, key=lambda t: -t[1])


def summary(src: Path = SRC) -> dict:
    mods = modules(src)
    graph = imports(src)
    pkgs = sorted({m.rpartition(".")[0] if not (mods[m].name == "__init__.py") else m for m in mods})
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in mods.values())
    longest = sorted(((f"{m}.{f}", n) for m, p in mods.items() for f, n in long_functions(p)), key=lambda t: -t[1])
    return {"modules": len(mods), "packages": len(pkgs), "lines": lines,
            "arrows": sum(len(v) for v in graph.values()), "cycles": cycles(graph),
            "functions_over_80_lines": [[f, n] for f, n in longest]}


if __name__ == "__main__":
    s = summary()
    if "--json" in sys.argv:
        print(json.dumps(s, indent=1))
    else:
        print(f"{s['modules']} modules in {s['packages']} packages, {s['lines']} lines, {s['arrows']} import arrows")
        print(f"cycles: {len(s['cycles'])}")
        for c in s["cycles"]:
            print("  " + " <-> ".join(c))
        print(f"functions over 80 lines: {len(s['functions_over_80_lines'])}")
        for f, n in s["functions_over_80_lines"]:
            print(f"  {n:4d}  {f}")
