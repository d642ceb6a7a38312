"""A researcher's own model as a local folder: data/tiny-models/opt-local (a tiny random OPT whose
revisions are its subfolders), how specs name its revisions, the errors for a missing revision, and that
the committed folder is what tg_utils.rehearsal.make_local writes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tg_utils.models import ModelSpec, ModelSpecError, load_model
from tg_utils.paths import resolve
from tg_utils import preflight
from tg_utils.rehearsal import LOCAL_MODEL, make_local

LOCAL = resolve(LOCAL_MODEL)


def test_a_local_revision_is_its_subfolder():
    s = ModelSpec.parse(f"{LOCAL_MODEL}@step8")
    assert (s.kind, s.revision) == ("local", "step8")
    assert s.folder() == LOCAL / "step8"
    assert s.table_key() == (LOCAL_MODEL, "step8")             # model column without the revision, as hub ids
    assert ModelSpec.parse(LOCAL_MODEL, "step0").folder() == LOCAL / "step0"
    assert ModelSpec.parse(LOCAL_MODEL).folder() == LOCAL


def test_a_missing_local_revision_names_the_ones_there():
    with pytest.raises(ModelSpecError, match=r"no revision subfolder 'step3'.*found: step0, step8"):
        ModelSpec.parse(f"{LOCAL_MODEL}@step3")


def test_local_revisions_load_their_own_weights():
    """Before: from_pretrained(folder, revision=...) ignored the revision of a local folder, so every
    revision silently loaded the same weights."""
    m0, m8 = (load_model(f"{LOCAL_MODEL}@step{k}") for k in (0, 8))
    assert m0.desc.arch == m8.desc.arch == "opt" and m8.desc.revision == "step8"
    w0 = m0.model.get_input_embeddings().weight
    w8 = m8.model.get_input_embeddings().weight
    assert not torch.equal(w0, w8)
    ref = load_file(str(LOCAL / "step8" / "model.safetensors"))
    name = next(k for k in ref if k.endswith("embed_tokens.weight"))
    assert torch.equal(w8, ref[name])


def test_preflight_reports_a_missing_local_revision(tmp_path, monkeypatch):
    section = {"toy_runs": [], "models": [str(LOCAL)], "revisions": ["step0", "step5"]}
    monkeypatch.setattr(preflight, "load_profile", lambda profile: {"06_training_trajectory_phases": section})
    rep = preflight.check("smoke", out=tmp_path / "out")
    assert any("no revision subfolder 'step5'" in p for p in rep.problems)
    assert not any("'step0'" in p for p in rep.problems)


def test_the_committed_folder_is_what_make_local_writes(tmp_path):
    """Weights within 1e-6: torch's normal_ draws the same stream on every CPU, but its vectorised and scalar
    kernels (ATEN_CPU_CAPABILITY avx2 / avx512 / default) evaluate Box-Muller's log, sin and cos to
    different last bits: measured up to 3.6e-8 on these std-0.02 weights, while another seed differs by
    ~0.03. Config and tokenizer (no floating point) exactly."""
    make_local(tmp_path / "opt")
    for step in ("step0", "step8"):
        new, old = (load_file(str(d / step / "model.safetensors")) for d in (tmp_path / "opt", LOCAL))
        assert new.keys() == old.keys()
        for k in new:
            torch.testing.assert_close(new[k], old[k], rtol=0, atol=1e-6, msg=k)
        for f in ("config.json", "tokenizer.json"):
            assert json.loads((tmp_path / "opt" / step / f).read_text()) == json.loads((LOCAL / step / f).read_text())
