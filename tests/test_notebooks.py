"""Notebook hygiene: committed without outputs, one `parameters` cell of literals whose names and
values equal the notebook's parameter dataclass defaults (= the default profile), validated next."""
import ast
import dataclasses
import json

import pytest
import yaml

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
