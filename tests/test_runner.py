"""The runner's contract: a failing notebook gives a non-zero exit naming the notebook and the
cell; a passing one leaves its executed copy and a log line with time and peak memory; bad
arguments stop before anything runs."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tg_utils.paths import repo_root

KERNEL = "token-geometry"


def _make_root(tmp_path: Path, body: str) -> Path:
    """A stand-in repository: params/smoke.yaml and one notebook named like notebook 01."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    (root / "tg_utils").mkdir()
    (root / "run_all.sh").write_text("")
    (root / "params" / "smoke.yaml").write_text("01_train_toy_models:\n  max_steps: 2\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell("max_steps = 600")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params,
                nbformat.v4.new_code_cell("from tg_utils.params import load_params\n"
                                          "P = load_params('01_train_toy_models', globals())"),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, root / "notebooks" / "01_train_toy_models.ipynb")
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TG_REPO_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "tg_utils.runner", "--kernel", KERNEL, *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def kernel_registered():
    from jupyter_client.kernelspec import KernelSpecManager
    if KERNEL not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"Jupyter kernel {KERNEL!r} is not registered: run the tests with `bash run_tests.sh`")


def test_failing_notebook_names_notebook_and_cell(tmp_path):
    root = _make_root(tmp_path, "assert P.max_steps == 2\nraise RuntimeError('boom in the analysis')")
    r = _run(root, "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert r.returncode == 1
    assert "FAILED 01_train_toy_models" in r.stderr
    assert "RuntimeError: boom in the analysis" in r.stderr
    assert "cell In [4]" in r.stderr  # parameters, injected parameters, load_params, the body
    executed = tmp_path / "out" / "notebooks" / "01_train_toy_models.ipynb"
    assert str(executed) in r.stderr and executed.exists()
    assert r.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"


def test_passing_notebook_logs_time_and_memory(tmp_path):
    root = _make_root(tmp_path, "import json, pathlib\n"
                                "pathlib.Path(P.out_dir, 'seen.json').write_text(json.dumps([P.max_steps, P.profile]))")
    out = tmp_path / "out"
    r = _run(root, "--profile", "smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "seen.json").read_text()) == [2, "smoke"]   # profile values reached the notebook
    rows = list(csv.DictReader((out / "run_log.csv").open()))
    assert rows[0]["notebook"] == "01_train_toy_models" and rows[0]["status"] == "ok"
    assert float(rows[0]["wall_s"]) > 0 and float(rows[0]["peak_rss_gib"]) > 0.01
    assert "01_train_toy_models: ok in" in r.stdout and "peak memory" in r.stdout


def test_ill_typed_injected_parameter_stops_the_notebook(tmp_path):
    root = _make_root(tmp_path, "pass")
    (root / "params" / "smoke.yaml").write_text("01_train_toy_models:\n  max_steps: many\n")
    r = _run(root, "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "parameter 'max_steps'" in r.stderr
    assert not (tmp_path / "out").exists()      # validated before anything was written


def test_unknown_profile_and_notebook():
    r = subprocess.run(["bash", str(repo_root() / "run_all.sh"), "--profile", "nope"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr
    r = subprocess.run(["bash", str(repo_root() / "run_all.sh"), "--only", "42"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no notebook '42'" in r.stderr
    r = _run(repo_root(), "--profile", "nope")
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])     # Ctrl-C, kill
def test_interrupt_stops_the_kernel_and_says_how_to_resume(tmp_path, sig):
    import signal
    import time

    import psutil
    root = _make_root(tmp_path, "import pathlib, time\npathlib.Path(P.out_dir, 'started').touch()\ntime.sleep(120)")
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "tg_utils.runner", "--kernel", KERNEL, "--profile", "smoke",
                          "--out", str(out)], env={**os.environ, "TG_REPO_ROOT": str(root)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "started").exists() and time.time() < deadline:
        time.sleep(0.1)
    children = psutil.Process(p.pid).children(recursive=True)      # papermill and its kernel
    assert children
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert "interrupted during 01_train_toy_models" in err and "run the same command again" in err
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[c.cmdline() for c in alive]}"


def test_missing_corpus_file_stops_the_run_before_any_notebook(tmp_path):
    root = _make_root(tmp_path, "pass")
    (root / "params" / "smoke.yaml").write_text("01_train_toy_models:\n  corpus: text\n  corpus_path: no/such.txt\n")
    r = _run(root, "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "section 01_train_toy_models: parameter 'corpus_path'" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "out").exists()


def test_run_temporary_files_live_under_out_and_are_removed(tmp_path):
    body = ("import os, pathlib, tempfile\n"
            "pathlib.Path(P.out_dir, 'tmpdir.txt').write_text(tempfile.gettempdir() + '\\n' + "
            "os.environ.get('JUPYTER_RUNTIME_DIR', ''))")
    root = _make_root(tmp_path, body)
    out = tmp_path / "out"
    stale = out / "tmp" / "999999999"                 # left by a killed run (no such process)
    stale.mkdir(parents=True)
    r = _run(root, "--profile", "smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    seen_tmp, seen_runtime = (out / "tmpdir.txt").read_text().splitlines()
    assert Path(seen_tmp).parent == out / "tmp" and Path(seen_runtime).parent == Path(seen_tmp)
    assert list((out / "tmp").iterdir()) == []        # this run's folder and the stale one are gone


def test_out_that_is_a_file_and_bad_yaml_are_named(tmp_path):
    root = _make_root(tmp_path, "pass")
    f = tmp_path / "a_file"
    f.write_text("x")
    r = _run(root, "--profile", "smoke", "--out", str(f))
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr
    (root / "params" / "smoke.yaml").write_text("01_train_toy_models:\n  max_steps: [2\n")
    r = _run(root, "--profile", "smoke", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "smoke.yaml: not valid YAML" in r.stderr and "line" in r.stderr
    (root / "params" / "smoke.yaml").write_text("01_train_toy_models:\n  max_steps: 2\n"
                                                "01_train_toy_models:\n  max_steps: 3\n")
    r = _run(root, "--profile", "smoke", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "'01_train_toy_models' is given twice (lines 1 and 3)" in r.stderr
