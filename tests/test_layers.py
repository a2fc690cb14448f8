"""The layers of DESIGN.md, checked on the imports of every module (read with ast, so a lazy
import inside a function counts as much as one at the top):

    errors, io -> nn -> models -> checkpoints, data, decode, detect -> train (the engine)
      -> tasks -> export, viz -> runs -> experiments -> cli

A module imports only its own layer or those below it, and the imports have no circle, between
files or between packages. A module's own packages (``attnlab``, ``attnlab.models`` for
``attnlab.models.registry``) are no edge: Python runs them before the module anyway.

The arrows still against the layers are listed in :data:`KNOWN` with what removes them: any
other arrow fails, and so does a listed one that is gone (take it off the list)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    ("errors", "io", "cpu"),
    ("nn",),
    ("models", "convert"),
    ("checkpoints", "data", "decode", "detect"),
    ("train",),
    ("tasks",),
    ("export", "viz"),
    ("runs",),
    ("experiments",),
    ("cli", "__main__"),
]
LEVEL = {part: i for i, parts in enumerate(LAYERS) for part in parts}

#: up-arrows and circles still in the code, each with the change that removes it (issue 22)
KNOWN_UP: dict[str, str] = {}
KNOWN_FILE_CIRCLES: dict[str, str] = {}
KNOWN_PACKAGE_CIRCLES: dict[str, str] = {}


def modules(root: Path = SRC) -> dict[str, Path]:
    """``{"attnlab.train.engine": path, ...}``; a package is its ``__init__``."""
    out = {}
    for path in sorted((root / "attnlab").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The attnlab modules ``path`` imports, anywhere in the file (``from attnlab.x import y``
    names the module ``attnlab.x.y`` when there is one, else ``attnlab.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known:
                out.add(name)
    return out


def graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules it imports, but for itself and its own packages."""
    known = modules(root)
    return {m: {d for d in imports(p, known) if not (m + ".").startswith(d + ".")}
            for m, p in known.items() if m != "attnlab"}


def part(module: str) -> str:
    """The top-level package or module of ``attnlab.<part>...``."""
    return module.split(".")[1]


def level(module: str) -> int:
    try:
        return LEVEL[part(module)]
    except KeyError:
        raise AssertionError(f"{module} belongs to no layer of DESIGN.md; add it to LAYERS") from None


def up_arrows(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in g.items() for b in deps if level(b) > level(a))


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def packages(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, deps in g.items():
        out.setdefault(part(a), set()).update(part(b) for b in deps if part(b) != part(a))
    return out


def check(found: list[str], known: dict[str, str], what: str) -> None:
    new = [f for f in found if f not in known]
    assert not new, f"{what} against DESIGN.md's layers:\n" + "\n".join(new)
    gone = [k for k in known if k not in found]
    assert not gone, "gone from the code, take them off the known list: " + ", ".join(gone)


def test_every_module_has_a_layer():
    for m in graph():
        level(m)


def test_no_import_goes_up_a_layer():
    check(up_arrows(graph()), KNOWN_UP, "imports")


def test_no_two_files_import_each_other():
    check([" <-> ".join(c) for c in circles(graph())], KNOWN_FILE_CIRCLES, "import circles between files")


def test_no_two_packages_import_each_other():
    check([" <-> ".join(c) for c in circles(packages(graph()))], KNOWN_PACKAGE_CIRCLES,
          "import circles between packages")


@pytest.fixture
def tree(tmp_path):
    """A made-up attnlab whose files are written by the test."""
    def write(files: dict[str, str]) -> Path:
        for name, text in {"attnlab/__init__.py": "", **files}.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        return tmp_path
    return write


def test_the_checks_catch_what_they_are_for(tree):
    root = tree({
        "attnlab/nn/__init__.py": "",
        "attnlab/nn/a.py": "def f():\n    from attnlab.viz import b\n",  # a lazy import, upwards
        "attnlab/viz/__init__.py": "",
        "attnlab/viz/b.py": "from attnlab.viz.c import x\n",
        "attnlab/viz/c.py": "import attnlab.viz.b\nimport attnlab.viz\nx = 1\n",  # its own package: no edge
        "attnlab/viz/d.py": "from attnlab.nn.a import f\n",
        "attnlab/tasks/__init__.py": "from attnlab.nn import a\n",
        "attnlab/train/__init__.py": "from attnlab import tasks\n",
    })
    g = graph(root)
    assert g["attnlab.nn.a"] == {"attnlab.viz.b"} and g["attnlab.viz.c"] == {"attnlab.viz.b"}
    assert up_arrows(g) == ["attnlab.nn.a -> attnlab.viz.b", "attnlab.train -> attnlab.tasks"]
    assert circles(g) == [["attnlab.viz.b", "attnlab.viz.c"]]
    assert circles(packages(g)) == [["nn", "viz"]]
    with pytest.raises(AssertionError, match="attnlab.nn.a -> attnlab.viz.b"):
        check(up_arrows(g), {"attnlab.train -> attnlab.tasks": "known"}, "imports")
    with pytest.raises(AssertionError, match="take them off"):
        check(["attnlab.nn.a -> attnlab.viz.b"], {"attnlab.nn.a -> attnlab.viz.b": "", "gone -> away": ""}, "imports")
