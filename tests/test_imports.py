"""The import graph: each layer imports only the layers below it, and no two dsm modules import
each other, directly or round a loop. Imports inside functions count: they are how a lower layer
would reach a higher one lazily.

The layers, by folder (docs/design.md draws the same picture):
- ``dsm.plumbing``: configs, errors, files, storage URLs; imports no other dsm folder;
- ``dsm.core``: the math and the model file; imports the core and the plumbing;
- ``dsm.stats``: statistics over log p; imports the core, the plumbing and itself;
- none of the three imports Ray or MLflow.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dsm"
FRAMEWORKS = ("ray", "mlflow")
# layer -> the dsm folders it may import (itself included)
LAYERS = {"dsm.plumbing": ("dsm.plumbing",),
          "dsm.core": ("dsm.core", "dsm.plumbing"),
          "dsm.stats": ("dsm.stats", "dsm.core", "dsm.plumbing")}


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


def _layer_breaches(mods: dict[str, Path]) -> list[str]:
    """'module imports name' for every import that leaves its layer's allowed folders."""
    bad = []
    for layer, allowed in LAYERS.items():
        for m in sorted(x for x in mods if _in(x, [layer])):
            for i in sorted(_imports(mods[m])):
                outside = i.split(".")[0] == "dsm" and i != "dsm" and not _in(i, allowed)
                if outside or i.split(".")[0] in FRAMEWORKS:
                    bad.append(f"{m} imports {i}")
    return bad


def test_each_layer_imports_only_the_layers_below_it():
    mods = _modules()
    assert all(any(_in(m, [layer]) for m in mods) for layer in LAYERS), "a layer folder is missing"
    assert not _layer_breaches(mods), _layer_breaches(mods)


def test_the_layer_check_can_fail(tmp_path):
    for name, text in {"core/a.py": "from dsm.train import run\n", "plumbing/b.py": "import dsm.core.energy\n",
                       "stats/c.py": "import mlflow\n", "core/d.py": "from dsm.plumbing import fileio\n"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    fake = {f"dsm.{n.removesuffix('.py').replace('/', '.')}": tmp_path / n
            for n in ("core/a.py", "plumbing/b.py", "stats/c.py", "core/d.py")}
    assert _layer_breaches(fake) == ["dsm.plumbing.b imports dsm.core.energy", "dsm.core.a imports dsm.train",
                                     "dsm.core.a imports dsm.train.run", "dsm.stats.c imports mlflow"]


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


ROOT = PACKAGE.parent
CODE = ("dsm", "benchmarks", "analysis")  # tests may test a module's private helpers; code may not use them


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree: ast.AST) -> set[str]:
    """Names a file defines: functions, classes, methods, assigned names and attributes."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            out.add(n.attr)
    return out


def _private_breaches(files: dict[str, str], dsm_private: set[str]) -> list[str]:
    """'file:line name' wherever a file imports another dsm module's private name, or reaches one
    as an attribute (``obj._name`` of a private name dsm defines elsewhere, not on self or cls)."""
    bad = []
    for name, text in files.items():
        tree = ast.parse(text)
        own = _defined(tree)
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").split(".")[0] == "dsm"):
                bad += [f"{name}:{n.lineno} {a.name}" for a in n.names if _private(a.name)]
            elif (isinstance(n, ast.Attribute) and _private(n.attr) and n.attr in dsm_private
                  and n.attr not in own and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))):
                bad.append(f"{name}:{n.lineno} {ast.unparse(n)}")
    return bad


def test_no_module_uses_another_modules_private_names():
    files = {str(f.relative_to(ROOT)): f.read_text() for top in CODE for f in sorted((ROOT / top).rglob("*.py"))}
    dsm_private = {n for name, text in files.items() if name.startswith("dsm/")
                   for n in _defined(ast.parse(text)) if _private(n)}
    assert len(dsm_private) > 50  # the names exist, so the check below can find their uses
    assert not _private_breaches(files, dsm_private), _private_breaches(files, dsm_private)
    fake = {"a.py": "from dsm.report.figures import _plt\n", "b.py": "def f(m):\n    m._require()\n",
            "c.py": "class C:\n    def _require(self): ...\n    def g(self):\n        self._require()\n"}
    assert _private_breaches(fake, {"_require"}) == ["a.py:1 _plt", "b.py:2 m._require"]
