"""Issue 18 (paper scale): the device / model_dtype parameters of every notebook, and the crashes a GPU run
met: notebooks 02-05 keeping every loaded model alive, notebook 07's vocabulary scans on two devices, and
layer states of a device_map model stacked across devices."""
import gc
import types
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from tg_utils.params import ParameterError, notebook_names, params_class


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("nb", notebook_names())
def test_every_notebook_has_device_and_model_dtype(nb):
    cls = params_class(nb)
    P = cls()
    assert P.device == "cpu" and P.model_dtype == "float32"
    with pytest.raises(ParameterError, match="parameter 'device'"):
        cls.from_dict({"device": "gpu0"}, nb)
    with pytest.raises(ParameterError, match="parameter 'model_dtype'"):
        cls.from_dict({"model_dtype": "int8"}, nb)
    assert cls.from_dict({"device": "cuda:1", "model_dtype": "bfloat16"}, nb).device == "cuda:1"


def test_device_map_and_meta_are_checked():
    cls = params_class("03_geometry_metrics")
    assert cls.from_dict({"device_map": "auto"}).device_map == "auto"
    with pytest.raises(ParameterError, match="parameter 'device_map'"):
        cls.from_dict({"device_map": "everywhere"})
    with pytest.raises(ParameterError, match="needs remote: true"):
        cls.from_dict({"device": "meta"})
    assert params_class("02_extract_states").from_dict({"device": "meta", "remote": True}).device == "meta"
    with pytest.raises(ParameterError, match="parameter 'model_dtype'"):     # training: float32 or bf16 autocast
        params_class("01_train_toy_models").from_dict({"model_dtype": "float16"})


def test_notebook_07_still_accepts_dtype_as_an_alias():
    from tg_utils.params import load_params
    cls = params_class("07_attention_geometry")
    assert cls.from_dict({"dtype": "bfloat16"}).model_dtype == "bfloat16"
    # the notebook's parameters cell holds model_dtype's default; papermill injected the old name beside it
    P = load_params("07_attention_geometry", {"model_dtype": "float32", "dtype": "bfloat16"})
    assert P.model_dtype == "bfloat16"
    with pytest.raises(ParameterError, match="'dtype' \\(the old name of 'model_dtype'\\)"):
        cls.from_dict({"dtype": "bfloat16", "model_dtype": "float16"})
    with pytest.raises(ParameterError, match="parameter 'model_dtype'"):
        cls.from_dict({"dtype": "int8"})


def test_paper_profile_uses_the_gpu_and_the_papers_dtypes():
    from tg_utils.params import load_profile
    sec = load_profile("paper")
    for nb in ("02_extract_states", "03_geometry_metrics", "04_shuffle_experiment", "05_model_comparison"):
        assert sec[nb]["device"] == "cuda" and sec[nb]["model_dtype"] == "bfloat16", nb
    # Traveling Words ran GPT-2 124M in float32 (transformers' default in its scripts)
    assert sec["07_attention_geometry"]["device"] == "cuda" and sec["07_attention_geometry"]["model_dtype"] == "float32"
    assert sec["01_train_toy_models"]["device"] == "cuda"
    assert sec["06_training_trajectory_phases"]["device"] == "cuda"


def test_bfloat16_training_autocasts_and_is_recorded(tmp_path):
    from tg_utils.toy.model import preset
    from tg_utils.toy.train import TrainConfig, autocast, train_run
    assert isinstance(autocast("cpu", None), type(autocast("cuda", None)))          # float32: no context
    with autocast("cpu", "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    ids = np.arange(400) % 50
    cfg = preset("llama-preln", n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, vocab_size=64)
    tc = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_every=1, eval_tokens=64, save_every=1)
    log = train_run(tmp_path / "bf16", cfg, tc, ids, ids, progress=False, amp_dtype="bfloat16")
    assert np.isfinite(log.train_loss.iloc[1:]).all()
    import json
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["autocast"] == "bfloat16"
    train_run(tmp_path / "fp32", cfg, tc, ids, ids, progress=False)
    assert "autocast" not in json.loads((tmp_path / "fp32" / "config.json").read_text())


# ----------------------------------------------------------------------------- one model loaded at a time

class _Tracked:
    """Stands in for a LoadedModel; every instance is tracked, so a test sees which are still alive."""
    alive: list = []

    def __init__(self, spec):
        gc.collect()
        held = [r() for r in _Tracked.alive if r() is not None]
        assert not held, f"loading {spec} while {[m.spec for m in held]} is still held"
        self.spec = spec
        self.desc = types.SimpleNamespace(is_decoder=True, n_layers=2, d_model=4, quantized_from=None,
                                          summary=lambda: spec)
        _Tracked.alive.append(weakref.ref(self))


class _Prompts:
    ids = [[1, 2, 3, 4]] * 3
    bos = False

    def __len__(self):
        return 3


def _table(spec, *a, **k):
    return pd.DataFrame({"model": [spec], "revision": [""], "prompt_id": [0], "shuffle_index": [0],
                         "layer": [0], "metric": ["id"], "value": [1.0]})


@pytest.fixture
def tracked(monkeypatch):
    _Tracked.alive = []
    yield
    _Tracked.alive = []


def _params(nb, **kw):
    return params_class(nb).from_dict({"toy_runs": ["llama-preln", "llama-postln"], "models": [], **kw})


def test_notebook_03_holds_one_model_at_a_time(monkeypatch, tracked):
    from tg_utils.experiments import nb03_geometry_metrics as nb03
    monkeypatch.setattr(nb03, "prompt_corpus", lambda *a: None)
    monkeypatch.setattr(nb03, "load", lambda spec, P: _Tracked(spec))
    monkeypatch.setattr(nb03, "prompts_for", lambda *a: _Prompts())
    monkeypatch.setattr(nb03, "geometry_table", _table)
    monkeypatch.setattr(nb03, "heatmap_matrices", lambda lm, *a: {0: np.eye(2)})
    monkeypatch.setattr(nb03, "profile_summary", lambda long, *a, **k: long)
    monkeypatch.setattr(nb03, "with_labels", lambda df: df)
    P = _params("03_geometry_metrics")
    res = nb03.run(P, progress=False)
    assert len(res.specs) == 4 and len(nb03.heatmaps(res, P)) == 2      # trained models: matrices kept, not models


def test_notebooks_02_04_05_hold_one_model_at_a_time(monkeypatch, tracked):
    from tg_utils.data.prompts import ShufflePrompts
    from tg_utils.experiments import nb02_extract_states as nb02
    from tg_utils.experiments import nb04_shuffle_experiment as nb04
    from tg_utils.experiments import nb05_model_comparison as nb05
    st = types.SimpleNamespace(layers=[0, 1], loss=torch.zeros(3))
    monkeypatch.setattr(nb02, "load_corpus", lambda *a: None)
    monkeypatch.setattr(nb02, "run_model", lambda spec, *a: (_Tracked(spec), _Prompts(), st))
    monkeypatch.setattr(nb02, "norm_rows", lambda spec, *a: pd.DataFrame({"model": [spec]}))
    assert len(nb02.run(_params("02_extract_states"), progress=False).summary) == 4

    _Tracked.alive = []
    monkeypatch.setattr(nb05, "model_geometry", lambda spec, *a: (_table(spec), _Tracked(spec), _Prompts()))
    monkeypatch.setattr(nb05, "profile_states", lambda lm, *a, **k: lm.spec)     # states, not the model
    _, info, toy_states = nb05.comparison_tables(_params("05_model_comparison"), None, progress=False)
    assert len(info) == 4 and set(toy_states) == {"toy:llama-preln@0", "toy:llama-preln", "toy:llama-postln@0",
                                                  "toy:llama-postln"}
    assert nb05.similarity_pairs(list(toy_states)) == [      # trained vs random per run, then architectures
        ("toy:llama-preln", "toy:llama-preln@0"), ("toy:llama-postln", "toy:llama-postln@0"),
        ("toy:llama-preln", "toy:llama-postln")]

    _Tracked.alive = []
    monkeypatch.setattr(nb04, "prompt_corpus", lambda *a: None)
    monkeypatch.setattr(nb04, "load", lambda spec, P: _Tracked(spec))
    monkeypatch.setattr(nb04, "build_shuffle_prompts", lambda lm, *a: ShufflePrompts(
        lm.spec, 4, False, _Prompts.ids, ["a"] * 3, 1, [0], 0))
    monkeypatch.setattr(nb04, "geometry_table", _table)
    monkeypatch.setattr(nb04, "profile_summary", lambda long, *a, **k: long)
    P = params_class("04_shuffle_experiment").from_dict({"models": ["toy:llama-preln", "toy:llama-postln"],
                                                         "n_prompts_by_model": {}})
    assert len(nb04.run(P, progress=False).long) == 2


# ----------------------------------------------------------------------------- devices

def test_vocab_scan_buffers_follow_the_rows_device():
    from tg_utils.weights.vocab import scan_extremes, vocab_extremes
    R = torch.randn(40, 6, device="meta")
    ext = scan_extremes(torch.randn(3, 6), R, k=4, chunk=16, bottom=2)
    assert {t.device.type for t in (ext.top_values, ext.top_ids, ext.bottom_values, ext.bottom_ids)} == {"meta"}
    assert ext.top_ids.shape == (3, 4) and ext.bottom_ids.shape == (2, 4)
    R = torch.randn(40, 6)
    a, b = vocab_extremes(torch.randn(3, 6), R, k=4, chunk=16), scan_extremes(torch.randn(3, 6), R, k=4)
    assert a.top_ids.device.type == b.top_ids.device.type == "cpu"


def test_layer_states_from_several_devices_are_gathered_before_stacking():
    """device_map="auto" puts blocks on different GPUs, so the layer outputs of one prompt live on different
    devices and torch.stack of them raised. gather_layers moves each to one device first."""
    from tg_utils.extract import gather_layers
    parts = [torch.randn(5, 4), torch.randn(5, 4, device="meta"), torch.randn(5, 4)]
    with pytest.raises(RuntimeError):
        torch.stack(parts)
    out = gather_layers(parts, "meta")
    assert out.device.type == "meta" and out.shape == (3, 5, 4)
    cpu = [torch.randn(5, 4) for _ in range(3)]
    assert torch.equal(gather_layers(cpu), torch.stack(cpu))
