"""ModelSpec: the one parser of model specs (toy runs, offline wheels, local folders, hub ids with
revisions), its labels and table keys, and the errors that name the fix."""
from __future__ import annotations

import pytest

from tg_utils.models import ModelSpec, ModelSpecError
from tg_utils.models.load import first_device
from tg_utils.models.spec import table_label
from tg_utils.params import ParameterError, check_spec


@pytest.mark.parametrize("text, kind, name, revision, step, table", [
    ("toy:llama-preln@0", "toy", "llama-preln", None, 0, ("toy:llama-preln", "step0")),
    ("toy:llama-preln@160", "toy", "llama-preln", None, 160, ("toy:llama-preln", "step160")),
    ("smollm2-135m", "offline", "smollm2-135m", None, None, ("smollm2-135m", "")),
    ("EleutherAI/pythia-160m@step1000", "hub", "EleutherAI/pythia-160m", "step1000", None,
     ("EleutherAI/pythia-160m", "step1000")),
    ("allenai/OLMo-1B-hf", "hub", "allenai/OLMo-1B-hf", None, None, ("allenai/OLMo-1B-hf", "")),
    (" gpt2 ", "hub", "gpt2", None, None, ("gpt2", "")),
])
def test_forms(text, kind, name, revision, step, table):
    s = ModelSpec.parse(text)
    assert (s.kind, s.name, s.revision, s.step) == (kind, name, revision, step)
    assert s.table_key() == table
    assert ModelSpec.parse(str(s)) == ModelSpec.parse(str(s))            # str() parses back to the same
    assert ModelSpec.parse(str(s)).base == s.base


def test_revision_given_as_argument_or_in_the_spec():
    assert ModelSpec.parse("org/m", revision="v1") == ModelSpec("hub", "org/m", "v1", None, "org/m")
    assert ModelSpec.parse("org/m@v1", revision="v1").revision == "v1"
    with pytest.raises(ModelSpecError, match="two revisions"):
        ModelSpec.parse("org/m@v1", revision="v2")


def test_local_folders_relative_and_absolute(tmp_path, monkeypatch):
    (tmp_path / "models" / "my-llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for text in ("models/my-llama", "./models/my-llama", str(tmp_path / "models" / "my-llama")):
        s = ModelSpec.parse(text)
        assert s.kind == "local" and s.name == str(tmp_path / "models" / "my-llama")
        assert s.table_key() == (text, "")
    with pytest.raises(ModelSpecError, match="no such directory 'models/my-lama'"):
        ModelSpec.parse("models/my-lama")                      # a typo is a missing folder, not a hub id


def test_labels():
    assert ModelSpec.parse("toy:standard-postln@0").label == "standard-postln (random)"
    assert ModelSpec.parse("toy:standard-postln").label == "standard-postln (trained)"
    assert ModelSpec.parse("toy:standard-postln@16").short_name == "standard-postln (toy)"
    assert ModelSpec.parse("EleutherAI/pythia-70m@step8").label == "EleutherAI/pythia-70m@step8"
    assert ModelSpec.parse("EleutherAI/pythia-70m@step8").short_name == "pythia-70m"
    assert table_label("toy:llama-preln", "step0") == "llama-preln (random)"
    assert table_label("gemma3-270m", "") == "gemma3-270m"


@pytest.mark.parametrize("bad, match", [
    ("", "empty"), ("toy:a@b", "toy:<run>@<step>"), ("smollm2-135m@main", "no revisions"),
    ("toy:run@3 extra", "toy:<run>"), ("not a spec!", "not a hub id"), ("org/m@", "followed by a revision"),
    ("./missing", "no such directory"),
])
def test_errors_name_the_fix(bad, match):
    with pytest.raises(ModelSpecError, match=match):
        ModelSpec.parse(bad)
    with pytest.raises(ParameterError):                        # the same check before any notebook runs
        check_spec(bad)


def test_first_device_of_a_device_map():
    assert first_device({"model.embed": "cpu", "lm_head": 1}) == "cpu"
    assert first_device({"": 0}) == "cuda:0"
    assert first_device("cpu") == "cpu"
    assert first_device("auto") in ("cpu", "cuda:0")
