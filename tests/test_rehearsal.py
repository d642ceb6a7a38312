"""The rehearsal hub cache (tg_utils.rehearsal) and the preflight (tg_utils.preflight) without a network:
the cache's layout, specs with revisions resolving offline from it, the preflight of the paper profile
(fast, names what is missing, prints the estimate table) and the gated-model check that stops a run before
its first notebook. No full rehearsal run here (run_tests.sh runs it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tg_utils import hubcache as H
from tg_utils import preflight, rehearsal
from tg_utils.paths import repo_root

KERNEL = "token-geometry"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return rehearsal.make(tmp_path_factory.mktemp("hub") / "rehearsal_hub")


def _env(**kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(repo_root())}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def test_cache_layout_refs_snapshots_blobs(hub):
    assert json.loads((hub / "tg_rehearsal.json").read_text())["version"] == rehearsal.REHEARSAL_VERSION
    pythia = H.repo_folder(hub, "tg-rehearsal/tiny-pythia")
    refs = {p.name: p.read_text() for p in (pythia / "refs").iterdir()}
    assert set(refs) == {f"step{s}" for s in rehearsal.STEPS} | {"main"}
    assert refs["main"] == refs["step8"] and len(set(refs.values())) == len(rehearsal.STEPS)
    for commit in refs.values():
        snap = pythia / "snapshots" / commit
        assert len(commit) == 40 and (snap / "config.json").is_symlink()
        assert (snap / "model.safetensors").resolve().parent == pythia / "blobs"
    for repo in rehearsal.STAND_INS:
        s = H.snapshot(repo, None, hub)
        assert s.complete == (repo != "tg-rehearsal/tiny-gated"), repo
    assert H.snapshot("tg-rehearsal/tiny-gated", None, hub).missing == "the weights"
    assert H.snapshot("tg-rehearsal/tiny-pythia", "step3", hub).folder is None
    assert rehearsal.make(hub) == hub                          # complete: left as it is


def test_access_markers(hub):
    assert H.access("tg-rehearsal/tiny-llama-3", None, hub, "no network").state == "granted"
    denied = H.access("tg-rehearsal/tiny-gated", None, hub, "no network")
    assert denied.problem and "no access" in denied.text
    assert H.access("tg-rehearsal/tiny-pythia", None, hub, "no network").text == "not checked: no network"


def test_specs_with_revisions_resolve_offline_from_the_cache(hub):
    code = ("from tg_utils.models import load_model\n"
            "a = load_model('tg-rehearsal/tiny-pythia@step8'); b = load_model('tg-rehearsal/tiny-pythia', revision='step0')\n"
            "l = load_model('tg-rehearsal/tiny-llama-3', dtype='bfloat16', device_map='auto')\n"
            "wa, wb = a.model.gpt_neox.embed_in.weight, b.model.gpt_neox.embed_in.weight\n"
            "print(a.desc.arch, a.desc.revision, a.desc.adds_bos, bool((wa != wb).any()))\n"
            "print(l.desc.arch, l.desc.n_kv_heads, l.desc.adds_bos, str(l.desc.dtype))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=_env(HF_HUB_CACHE=hub))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["gpt_neox step8 False True", "llama 2 True torch.bfloat16"]


def test_paper_preflight_offline_is_fast_and_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    r = preflight.check("paper", out=tmp_path / "out", gpu_memory=80)      # its time: benchmarks, not here
    text = preflight.render(r, "paper")
    for repo in ("meta-llama/Meta-Llama-3-8B", "mistralai/Mistral-7B-v0.1", "EleutherAI/pythia-6.9b",
                 "EleutherAI/pythia-160m", "gpt2"):
        assert any(p.startswith(repo) and "must be downloaded" in p for p in r.problems), repo
    assert "pythia-160m (20 revisions: step0, step1, step2 ... step143000)" in text
    for name in ("hf:Salesforce/wikitext:wikitext-2-raw-v1", "hf:NeelNanda/pile-10k"):   # data sets by name
        assert any(p.startswith(f"data set {name}: not in the hub cache; --download") for p in r.problems), name
    assert "not checked: HF_HUB_OFFLINE=1: meta-llama/Meta-Llama-3-8B (gated on the hub)" in text
    assert "Traceback" not in text and text.count("not checked") == 1
    assert "size unknown" not in text                  # every paper model's size is known without a download
    table = text[text.index("== estimate"):]
    for nb in ("01_train_toy_models", "04_shuffle_experiment", "07_attention_geometry", "total"):
        assert nb in table
    big = {e.notebook: e for e in r.estimates}["02_extract_states"]
    assert big.download_gb > 40 and big.gpu_gb > 16 and big.ram_gb > 20     # Llama-3-8B in bf16, 50 x 1024 states
    # 04 reads the same three hub models as 02: nothing more to download (Pythia was counted twice when 04
    # named it by revision step143000, the same weights as main)
    assert {e.notebook: e for e in r.estimates}["04_shuffle_experiment"].download_gb == 0


def test_preflight_sees_the_rehearsal_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    r = preflight.check("rehearsal", only=["02", "06", "07"], out=tmp_path)
    models = "\n".join(r.lines["models"])
    assert "cached      tg-rehearsal/tiny-pythia@step4  (06)" in models
    assert "MISSING     toy:llama-preln" in models                    # notebook 01 is not in this run
    assert [p for p in r.problems if "toy:" not in p] == []
    assert preflight.check("rehearsal", out=tmp_path).problems == []    # with 01: it trains the toys


def _gated_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    (root / "tg_utils").mkdir()
    (root / "run_all.sh").write_text("")
    (root / "notebooks" / "02_extract_states.ipynb").write_text("{}")
    (root / "params" / "rehearsal.yaml").write_text(
        "02_extract_states:\n  toy_runs: []\n  models: [tg-rehearsal/tiny-llama-3, tg-rehearsal/tiny-gated]\n")
    return root


def test_a_gated_model_without_access_stops_the_run_before_any_notebook(hub, tmp_path):
    root, out = _gated_root(tmp_path), tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "tg_utils.runner", "--kernel", KERNEL, "--profile", "rehearsal",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env=_env(TG_REPO_ROOT=root, TG_REHEARSAL_HUB=hub))
    assert r.returncode == 2, r.stdout + r.stderr
    line = "PROBLEM: tg-rehearsal/tiny-gated (main): gated, and the current token has no access (simulated)"
    assert line in r.stdout
    assert "tg-rehearsal/tiny-llama-3: gated, access granted" not in r.stdout   # cached: nothing to ask
    assert "stopped before the first notebook" in r.stderr
    assert not (out / "notebooks").exists() and not (out / "run_log.csv").exists()
    r = subprocess.run([sys.executable, "-m", "tg_utils.preflight", "--profile", "rehearsal"],
                       capture_output=True, text=True, timeout=120, env=_env(TG_REPO_ROOT=root, HF_HUB_CACHE=hub))
    assert r.returncode == 1 and line in r.stdout
