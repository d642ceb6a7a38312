"""Notebook hygiene: committed without outputs, one `parameters` cell of literals whose names and
values equal the notebook's parameter dataclass defaults (= the default profile), validated next; saved in
the form JupyterLab writes (tg_utils.notebook_files), so that opening one leaves it unmodified."""
import ast
import dataclasses
import json
import platform

import pytest
import yaml

from tg_utils import notebook_files
from tg_utils.params import notebook_names, params_class
from tg_utils.paths import repo_root

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_registered_notebook_exists_and_vice_versa():
    assert sorted(p.stem for p in NOTEBOOKS) == notebook_names()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "token-geometry"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in code), "strip outputs"
    assert nb["cells"][0]["cell_type"] == "markdown", "a markdown header says what the notebook answers"
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    cell = nb["cells"][tagged[0]]
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters cell: assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)   # literals only
    cls = params_class(path.stem)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls)}
    assert values == defaults, "the parameters cell must equal the dataclass defaults"
    nxt = "".join(nb["cells"][tagged[0] + 1]["source"])
    assert f'load_params("{path.stem}", globals())' in nxt, "validate the parameters right after the cell"
    default_profile = yaml.safe_load((repo_root() / "params" / "default.yaml").read_text())[path.stem] or {}
    for k, v in default_profile.items():
        assert defaults[k] == v, f"params/default.yaml {path.stem}.{k} differs from the notebook's default"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_as_jupyterlab_saves_it(path):
    text = path.read_text()
    assert text == notebook_files.dumps(notebook_files.normalise(notebook_files.read(path))), \
        "not in the form JupyterLab saves (it would show as modified on open): python -m tg_utils.notebook_files"
    info = json.loads(text)["metadata"]["language_info"]
    assert info["version"].startswith("3.11."), "the kernel's Python (pyproject: requires-python 3.11)"


def _stub(**metadata):
    return {"nbformat": 4, "nbformat_minor": 4, "metadata": metadata, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# stub"},
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": 3,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}],
         "source": "a = 1\nb = [1,\n     2]\nc = 'x'"},
        {"cell_type": "code", "id": "cell-01", "metadata": {}, "execution_count": None, "outputs": [], "source": ""}]}


def test_normalise_gives_jupyterlab_metadata_ids_and_no_outputs():
    from ipykernel.ipkernel import IPythonKernel  # the kernel's own kernel_info (what JupyterLab writes)
    nb = notebook_files.normalise(_stub(language_info={"name": "python"}))
    assert nb["nbformat_minor"] == 5
    assert nb["metadata"]["kernelspec"]["name"] == "token-geometry"
    assert nb["metadata"]["language_info"] == IPythonKernel.language_info
    ids = [c["id"] for c in nb["cells"]]
    assert ids == ["cell-00", "cell-01-1", "cell-01"]
    assert nb["cells"][1]["outputs"] == [] and nb["cells"][1]["execution_count"] is None
    again = notebook_files.normalise(nb)
    assert again == nb and notebook_files.dumps(again).endswith("}\n")
    kept = notebook_files.normalise(_stub(language_info={"name": "python", "version": "3.11.2"}))
    assert kept["metadata"]["language_info"]["version"] == "3.11.2"
    assert notebook_files.normalise(kept, "3.11.9")["metadata"]["language_info"]["version"] == "3.11.9"
    with pytest.raises(ValueError, match="nbformat 4"):
        notebook_files.normalise({**_stub(), "nbformat": 3})


def test_with_parameters_rewrites_named_literals_only():
    nb = notebook_files.with_parameters(_stub(), {"b": [3], "c": None})
    src = "".join(nb["cells"][1]["source"])
    assert src == "a = 1\nb = [3]\nc = None"
    assert {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(src).body} == {"a": 1, "b": [3], "c": None}
    with pytest.raises(ValueError, match="has no d"):
        notebook_files.with_parameters(_stub(), {"d": 1})


def test_command_rewrites_and_checks(tmp_path, capsys):
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps(_stub()))
    assert notebook_files.main(["--check", str(p)]) == 1
    assert "not in the committed form" in capsys.readouterr().err
    assert notebook_files.main([str(p)]) == 0
    assert notebook_files.main(["--check", str(p)]) == 0
    assert json.loads(p.read_text())["metadata"]["language_info"]["version"] == platform.python_version()
