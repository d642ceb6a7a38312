"""Whole-run guarantees (issue 9) on the smoke profile of notebooks 01 (training: checkpoints, resume)
and 03 (extraction through the cache, the metrics): two runs give the same numbers in every table,
and a run killed half-way through training and started again finishes with those same numbers.

Each run is `python -m tg_utils.runner --profile smoke --only 01 03 --out DIR`, as run_all.sh calls it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_runner import KERNEL, kernel_registered  # noqa: F401  (fails early when the kernel is missing)

NOTEBOOKS = ["01", "03"]
TIME_COLUMNS = {"elapsed_s", "train_time_s", "wall_s", "peak_rss_gib", "finished"}   # wall-clock, not results


def runner(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tg_utils.runner", "--kernel", KERNEL, "--profile", "smoke", "--only",
           *NOTEBOOKS, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)       # its own process group: killed as a whole


def finish(p: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every results table and figure-data table of a run, wall-clock columns dropped."""
    found = {}
    for sub in ("results", "figures"):
        for f in sorted((out / sub).rglob("*.csv")):
            df = pd.read_csv(f)
            found[str(f.relative_to(out))] = df.drop(columns=[c for c in df.columns if c in TIME_COLUMNS])
    return found


def weights(out: Path) -> dict[str, dict]:
    return {str(f.relative_to(out)): torch.load(f, weights_only=True)["model_state"]
            for f in sorted((out / "checkpoints").rglob("step_*.pt"))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    finish(runner(out))
    return out


def assert_same_run(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    assert sorted(ta) == sorted(tb) and len(ta) >= 5
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb) and wa
    for name in wa:
        for k in wa[name]:
            assert torch.equal(wa[name][k], wb[name][k]), f"{name}: {k} differs"


def test_two_runs_give_identical_tables_and_checkpoints(straight, tmp_path):
    finish(runner(tmp_path))
    assert_same_run(straight, tmp_path)


def test_killed_run_resumes_to_the_same_numbers(straight, tmp_path):
    """SIGKILL to the whole process group (runner, papermill, kernel) while the second toy run trains;
    the same command again finishes, and every table and checkpoint equals the uninterrupted run's."""
    p = runner(tmp_path)
    marker = tmp_path / "checkpoints" / "llama-postln" / "step_000004.pt"
    deadline = time.time() + 600
    while not marker.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "checkpoints" / "llama-postln" / "summary.json").exists()   # really cut mid-run
    assert (tmp_path / "checkpoints" / "llama-preln" / "summary.json").exists()
    log = finish(runner(tmp_path))
    assert "2 passed, 0 failed" in log
    assert_same_run(straight, tmp_path)
