"""The package's shape, read statically (every import statement: module level, inside functions, under
TYPE_CHECKING): no import circle, no upward import across the documented layer order, at most 8 modules at
the root, and no module that only re-exports names defined elsewhere."""

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minitx"

# Lowest first; a module may import from its own layer or any layer below (docs/architecture.md, "The house").
LAYERS = [
    ("minitx.checks", "minitx.config", "minitx.hooks", "minitx.seeding", "minitx.plots"),
    ("minitx.functional",),
    ("minitx.kernels",),
    ("minitx.positional",),
    ("minitx.attention",),
    ("minitx.nn",),
    ("minitx.models",),
    ("minitx.interpret",),
    ("minitx.generation",),
    ("minitx.tokenizers",),
    ("minitx.data",),
    ("minitx.training",),
    ("minitx.peft",),
    ("minitx.interop",),
    ("minitx.conformance",),  # `minitx check`: references from every layer above, used by the cli only
    ("minitx.recipes.pretrain",),
    ("minitx.recipes.lm",),
    ("minitx.recipes.finetune",),
    ("minitx.recipes.seq2seq",),
    ("minitx.recipes",),  # recipes/export.py sits on the three recipes above
    ("minitx.bench.timing", "minitx.bench.flops"),  # clocks and FLOP arithmetic: every benchmark sits on them
    ("minitx.bench.sidebyside",),  # gate, alternate, paired ratio: the latency and GPT training rows sit on it
    ("minitx.bench",),
    ("minitx.cli", "minitx.__main__"),
]


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def nearest(mods, dotted: str):
    parts = dotted.split(".")
    while parts and ".".join(parts) not in mods:
        parts.pop()
    return ".".join(parts) or None


def import_edges(mods) -> dict[str, set[str]]:
    """module -> the package modules it imports, from every Import / ImportFrom node anywhere in its file."""
    edges = {}
    for name, path in mods.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {nearest(mods, a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.add(sub if sub in mods else nearest(mods, base))
        edges[name] = {t for t in targets if t and t != name}
    return edges


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: give it a place in the order")
    return best


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


@lru_cache(maxsize=None)
def package_edges() -> dict[str, set[str]]:
    return import_edges(modules())


def test_no_import_circles():
    assert cycles(package_edges()) == []


def test_imports_point_down_the_layer_order_only():
    edges = package_edges()
    upward = [f"{a} -> {b}" for a, targets in edges.items() if a != "minitx"
              for b in sorted(targets) if b == "minitx" or layer_of(b) > layer_of(a)]
    assert upward == []


def test_the_walker_sees_imports_inside_functions_and_type_checking(tmp_path):
    """The checks above can fail: a circle made only of a function-level and a TYPE_CHECKING import is found."""
    pkg = tmp_path / "minitx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from minitx.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from minitx import a\n")
    mods = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
            for p in pkg.rglob("*.py")}
    assert cycles(import_edges(mods)) == [["minitx.a", "minitx.b"]]


def test_at_most_eight_modules_at_the_root():
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(root) <= 8, root


def own_and_exported(tree) -> tuple[set[str], list[str], bool]:
    """(names the module body defines, its __all__, whether it has any statement but imports and strings)."""
    own = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                own |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            own |= {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own.discard("__all__")
    code = any(not isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr)) and not (
        isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == ["__all__"]) for n in tree.body)
    exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and any(getattr(t, "id", None) == "__all__" for t in n.targets)), [])
    return own, exported, code


def test_no_module_only_re_exports():
    """Every module (a package's __init__ aside) defines something of its own, and every name in its __all__."""
    offenders = []
    for name, path in modules().items():
        if path.name == "__init__.py":
            continue
        own, exported, code = own_and_exported(ast.parse(path.read_text()))
        if not code and not name.endswith("__main__"):
            offenders.append(f"{name} defines nothing")
        if set(exported) - own:
            offenders.append(f"{name} re-exports {sorted(set(exported) - own)}")
    assert offenders == []
    shim = ast.parse("from minitx.nn.block import Block\n__all__ = ['Block']\n")  # the check can fail
    assert own_and_exported(shim) == (set(), ["Block"], False)


def test_the_layer_check_can_fail():
    """The edges are really read (BERT imports the Block), and such an edge reversed would be upward."""
    edges = package_edges()
    assert "minitx.nn.block" in edges["minitx.models.bert"]
    assert layer_of("minitx.nn.block") < layer_of("minitx.models.bert")
    assert layer_of("minitx.attention.multi_head") < layer_of("minitx.nn.norms")
