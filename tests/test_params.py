from dataclasses import dataclass, field
from typing import Literal

import pytest

from tg_utils.params import (NotebookParams, ParameterError, available_profiles, load_params,
                             load_profile, notebook_names, params_class)


@dataclass
class Demo(NotebookParams):
    n: int = 3
    lr: float = 0.1
    name: str = "x"
    flag: bool = False
    layers: list[int] = field(default_factory=lambda: [1, 2])
    path: str | None = None
    mode: Literal["all", "last"] = "all"
    extra: dict[str, int] = field(default_factory=dict)

    def check(self):
        super().check()
        self.positive("n")


def test_valid_values_pass_and_ints_widen():
    p = Demo.from_dict({"n": 5, "lr": 1, "layers": [3], "path": "a", "mode": "last", "extra": {"a": 1}})
    assert p.n == 5 and p.lr == 1.0 and isinstance(p.lr, float) and p.mode == "last"


@pytest.mark.parametrize("values, fragment", [
    ({"nn": 1}, "unknown parameter 'nn'"),
    ({"n": "5"}, "parameter 'n': expected an integer"),
    ({"n": True}, "parameter 'n': expected an integer"),
    ({"n": 2.5}, "parameter 'n': expected an integer"),
    ({"lr": "fast"}, "parameter 'lr': expected a number"),
    ({"flag": 1}, "parameter 'flag': expected bool"),
    ({"layers": [1, "2"]}, "parameter 'layers[1]'"),
    ({"layers": 3}, "parameter 'layers': expected a list"),
    ({"mode": "first"}, "parameter 'mode': 'first' is not one of"),
    ({"path": 3}, "parameter 'path'"),
    ({"extra": {"a": "b"}}, "extra['a']"),
    ({"n": 0}, "parameter 'n' must be positive"),
    ({"profile": "huge"}, "unknown profile 'huge'"),
])
def test_bad_values_name_the_parameter(values, fragment):
    with pytest.raises(ParameterError) as e:
        Demo.from_dict(values, "99_demo")
    assert fragment in str(e.value)


def test_load_params_reads_a_notebook_namespace():
    import math
    ns = {"In": [], "Out": {}, "get_ipython": print, "_": 1, "math": math,
          "vocab_size": 512, "max_steps": 3}
    p = load_params("01_train_toy_models", ns)
    assert p.vocab_size == 512 and p.max_steps == 3
    ns["typo_param"] = 1
    with pytest.raises(ParameterError, match="unknown parameter 'typo_param' of notebook 01_train_toy_models"):
        load_params("01_train_toy_models", ns)


def test_every_profile_validates_and_covers_every_notebook():
    assert {"smoke", "default", "paper"} <= set(available_profiles())
    for prof in available_profiles():
        sections = load_profile(prof)
        assert set(sections) == set(notebook_names()), prof


def test_unknown_notebook_and_profile():
    with pytest.raises(ParameterError, match="unknown notebook '42_x'"):
        params_class("42_x")
    with pytest.raises(ParameterError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_bad_profile_section_names_file_and_section(tmp_path, monkeypatch):
    (tmp_path / "params").mkdir()
    (tmp_path / "run_all.sh").write_text("")
    (tmp_path / "tg_utils").mkdir()
    (tmp_path / "params" / "bad.yaml").write_text("01_train_toy_models:\n  max_steps: many\n")
    monkeypatch.setenv("TG_REPO_ROOT", str(tmp_path))
    with pytest.raises(ParameterError, match=r"params/bad.yaml, section 01_train_toy_models: parameter 'max_steps'"):
        load_profile("bad")


def test_lr_by_run_sets_each_runs_peak_rate_and_rejects_unknown_runs():
    from tg_utils.toy import runs as toy_runs
    from tg_utils.params.notebooks import TrainToyParams
    P = TrainToyParams.from_dict({"lr": 3e-3, "lr_by_run": {"standard-postln": 7e-4, "llama-postln-nowarmup": 1e-3}})
    assert toy_runs.train_config(P, "llama-preln").lr == 3e-3
    assert toy_runs.train_config(P, "standard-postln").lr == 7e-4
    nw = toy_runs.train_config(P, toy_runs.NO_WARMUP)
    assert nw.lr == 1e-3 and nw.warmup_steps == 0
    with pytest.raises(ParameterError, match="lr_by_run.*'gpt2'"):
        TrainToyParams.from_dict({"lr_by_run": {"gpt2": 1e-3}})
    with pytest.raises(ParameterError, match="lr_by_run.*must be > 0"):
        TrainToyParams.from_dict({"lr_by_run": {"llama-postln": -1.0}})


@pytest.mark.parametrize("nb, values, match", [
    ("02_extract_states", {"models": [], "toy_runs": []}, "'models' and 'toy_runs' are both empty"),
    ("05_model_comparison", {"models": [], "toy_runs": []}, "'models' and 'toy_runs' are both empty"),
    ("04_shuffle_experiment", {"models": []}, "parameter 'models' is empty"),
    ("07_attention_geometry", {"models": []}, "parameter 'models' is empty"),
])
def test_no_model_at_all_is_refused_up_front(nb, values, match):
    with pytest.raises(ParameterError, match=match):
        params_class(nb).from_dict(values, nb)


def test_a_binary_corpus_file_is_refused_up_front(tmp_path):
    binary = tmp_path / "corpus.bin"
    binary.write_bytes(bytes(range(256)) * 100)
    P = params_class("01_train_toy_models").from_dict({"corpus": "text", "corpus_path": str(binary)},
                                                       "01_train_toy_models")
    with pytest.raises(ParameterError, match="corpus_path.*not a UTF-8 text file"):
        P.check_inputs()
    text = tmp_path / "corpus.txt"
    text.write_text("Ünïcode text is fine.\n" * 50)
    params_class("01_train_toy_models").from_dict({"corpus": "text", "corpus_path": str(text)},
                                                  "01_train_toy_models").check_inputs()
