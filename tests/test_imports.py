"""The import graph (issue #18): the math core imports neither Ray, MLflow nor the orchestration
packages, and no two dsm modules import each other, directly or round a loop. Imports inside
functions count: they are how the core would reach orchestration lazily."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dsm"
CORE = ["dsm.noise", "dsm.energy", "dsm.nets", "dsm.models", "dsm.losses", "dsm.step", "dsm.normalize", "dsm.deff",
        "dsm.ode", "dsm.units", "dsm.toy", "dsm.seeding", "dsm.bundle", "dsm.api", "dsm.precision"]
ORCHESTRATION = ("dsm.train", "dsm.tune", "dsm.scoring", "dsm.submit", "dsm.report", "dsm.runtime", "dsm.cli")
FRAMEWORKS = ("ray", "mlflow")


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (``from a import b`` gives
    ``a`` and ``a.b``, which is a module when b is a submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_no_framework_and_no_orchestration():
    mods = _modules()
    core = [m for m in mods if _in(m, CORE)]
    assert len(core) >= len(CORE), core
    bad = [f"{m} imports {i}" for m in sorted(core) for i in sorted(_imports(mods[m]))
           if _in(i, ORCHESTRATION) or i.split(".")[0] in FRAMEWORKS]
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {i for i in _imports(f) if i in mods and i != m and not m.startswith(i + ".")}
             for m, f in mods.items()}
    assert not _cycles(graph), _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail
