"""The committed notebooks' file form: exactly what JupyterLab 4 writes when it saves them (so opening one
shows no unsaved-changes marker), without outputs, and the rewriting of a copy's parameters cell.

    python -m tg_utils.notebook_files [--check] [notebooks/*.ipynb]   (default: every notebook in notebooks/)

What JupyterLab changes on open, found by opening the notebooks in JupyterLab 4.6 and saving them: the kernel
fills ``metadata.language_info`` from its kernel_info reply (ipykernel's ``IPythonKernel.language_info``,
ipykernel/ipkernel.py), which differs from a bare ``{"name": "python"}``; nbformat 4.5 with cell ids is kept.
The file is nbformat's JSON (indent 1, sorted keys, sources split into lines) plus a final newline, as
jupyter_server saves it. The ``version`` field is the interpreter's Python version: a notebook normalised on
Python 3.11.7 opens clean wherever the kernel's Python is 3.11.7 (elsewhere re-run this command once).
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import platform
import sys
from pathlib import Path

import nbformat

from .paths import resolve

KERNEL = "token-geometry"
KERNELSPEC = {"display_name": "token-geometry (Python 3.11)", "language": "python", "name": KERNEL}


def language_info(python_version: str | None = None) -> dict:
    """The language_info the token-geometry kernel (ipykernel) reports, for ``python_version`` (default:
    this interpreter's, which is the kernel's)."""
    version = python_version or platform.python_version()
    return {"codemirror_mode": {"name": "ipython", "version": int(version.split(".")[0])},
            "file_extension": ".py", "mimetype": "text/x-python", "name": "python",
            "nbconvert_exporter": "python", "pygments_lexer": "ipython3", "version": version}


def normalise(nb: dict, python_version: str | None = None) -> dict:
    """A copy of notebook ``nb`` (a dict) in the committed form: nbformat 4.5, the token-geometry kernelspec
    and its language_info, code cells without outputs or execution counts, every cell with an id (a missing
    one becomes ``cell-NN``, NN its index, or ``cell-NN-k`` when that is taken). ``python_version``: None keeps the notebook's recorded version
    (this interpreter's when it has none)."""
    nb = copy.deepcopy(nb)
    if nb.get("nbformat") != 4:
        raise ValueError(f"expected an nbformat 4 notebook, got nbformat {nb.get('nbformat')!r}")
    old = nb.get("metadata", {}).get("language_info", {}).get("version")
    nb["nbformat_minor"] = 5
    nb["metadata"] = {**nb.get("metadata", {}), "kernelspec": dict(KERNELSPEC),
                      "language_info": language_info(python_version or old)}
    ids = {c.get("id") for c in nb["cells"]}
    for i, cell in enumerate(nb["cells"]):
        if not cell.get("id"):
            new, k = f"cell-{i:02d}", 1
            while new in ids:                  # taken by a later cell: cell-NN-1, cell-NN-2, ...
                new, k = f"cell-{i:02d}-{k}", k + 1
            cell["id"] = new
            ids.add(new)
        cell.setdefault("metadata", {})
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def dumps(nb: dict) -> str:
    """The file text jupyter_server writes for ``nb`` (nbformat's JSON and a final newline)."""
    return nbformat.writes(nbformat.from_dict(nb), version=nbformat.NO_CONVERT) + "\n"


def read(path: Path) -> dict:
    """The notebook at ``path`` as a plain dict (unvalidated: normalise first)."""
    return json.loads(Path(path).read_text())


def with_parameters(nb: dict, values: dict) -> dict:
    """A copy of ``nb`` whose `parameters` cell assigns ``values`` (names it holds already, as literals;
    e.g. a profile's values for a notebook opened in JupyterLab). Raises ValueError for a name the cell
    does not hold."""
    nb = copy.deepcopy(nb)
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    lines = "".join(cells[0]["source"]).splitlines()
    body = ast.parse("\n".join(lines)).body
    unknown = sorted(set(values) - {node.targets[0].id for node in body})
    if unknown:
        raise ValueError(f"the parameters cell has no {', '.join(unknown)}")
    for node in reversed(body):                # one assignment may span several lines
        name = node.targets[0].id
        if name in values:
            lines[node.lineno - 1:node.end_lineno] = [f"{name} = {values[name]!r}"]
    cells[0]["source"] = "\n".join(lines)
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tg_utils.notebook_files", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/[0-9][0-9]_*.ipynb)")
    ap.add_argument("--check", action="store_true", help="only report notebooks not in the committed form")
    ap.add_argument("--python-version", help="the kernel's Python version to record (default: this interpreter's)")
    args = ap.parse_args(argv)
    paths = args.paths or sorted(resolve("notebooks").glob("[0-9][0-9]_*.ipynb"))
    version = args.python_version or platform.python_version()
    bad = 0
    for p in paths:
        text = p.read_text()
        new = dumps(normalise(read(p), None if args.check else version))
        if new == text:
            continue
        bad += 1
        if args.check:
            print(f"{p}: not in the committed form; run python -m tg_utils.notebook_files", file=sys.stderr)
        else:
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(new)
            os.replace(tmp, p)
            print(f"rewrote {p}")
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
