"""As a researcher uses it: JupyterLab (from this environment, on a free localhost port with a token) in
headless Chromium (the system's, driven by Playwright; nothing is downloaded), notebook 03 in the smoke
profile: it opens unmodified with the token-geometry kernel, Run All, then no error and no stderr box, an
image in every figure cell and the findings rendered as Markdown. Screenshots: outputs/browser-test/
(or $TG_BROWSER_OUT). Inputs: notebooks 01 and 02 in the smoke profile, from $TG_BROWSER_INPUTS (run_tests.sh
passes its smoke run's folder) or run here first (a few minutes: the smoke models are converted too)."""
from __future__ import annotations

import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tg_utils import notebook_files
from tg_utils.params import load_profile
from tg_utils.paths import repo_root

CHROMIUM = Path(os.environ.get("TG_CHROMIUM", "/usr/bin/chromium"))
NB = "03_geometry_metrics"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_MS = 600_000

pytestmark = pytest.mark.browser


def _need_browser():
    if not CHROMIUM.exists():
        pytest.skip(f"browser test skipped: no Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
                    "or set TG_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401  (the test extra; checked here to skip with a reason)
    except ImportError:
        pytest.skip("browser test skipped: playwright is not installed (pip install -e .[test])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke_inputs(tmp_path: Path) -> Path:
    """A smoke-profile output folder holding notebooks 01 and 02's results."""
    given = os.environ.get("TG_BROWSER_INPUTS")
    if given and (Path(given) / "checkpoints").is_dir() and (Path(given) / "cache").is_dir():
        return Path(given)
    out = tmp_path / "smoke"
    r = subprocess.run([sys.executable, "-m", "tg_utils.runner", "--kernel", notebook_files.KERNEL, "--profile",
                        "smoke", "--only", "01", "02", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, f"smoke run of notebooks 01 and 02 failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out


def _lab_root(tmp_path: Path, smoke: Path) -> Path:
    """A Jupyter root holding notebook 03 with the smoke profile's values in its parameters cell, in the
    committed form (what a person does: copy the notebook, edit the cell, save)."""
    values = {**load_profile("smoke")[NB], "profile": "smoke", "out_dir": str(smoke),
              "figures_dir": str(smoke / "figures")}
    nb = notebook_files.with_parameters(notebook_files.read(repo_root() / "notebooks" / f"{NB}.ipynb"), values)
    root = tmp_path / "lab"
    root.mkdir()
    (root / f"{NB}.ipynb").write_text(notebook_files.dumps(notebook_files.normalise(nb, platform.python_version())))
    return root


@pytest.fixture
def lab(tmp_path):
    """(url of notebook 03 in a running JupyterLab, its Jupyter root, the cells of the notebook file)."""
    _need_browser()
    root = _lab_root(tmp_path, _smoke_inputs(tmp_path))
    home, port, token = tmp_path / "jupyter", _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')   # no "official Jupyter news?" toast over the screenshots
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.expose_app_in_browser=True"],     # window.jupyterapp: to wait for the kernel's info
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}"
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 120 s")
        cells = notebook_files.read(root / f"{NB}.ipynb")["cells"]
        yield f"http://127.0.0.1:{port}/lab/tree/{NB}.ipynb?token={token}", root, cells
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _shots() -> Path:
    out = Path(os.environ.get("TG_BROWSER_OUT") or repo_root() / "outputs" / "browser-test")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def test_notebook_03_runs_clean_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright  # the test extra; imported once the skip checks passed
    url, root, cells = lab
    shots = _shots()
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=120_000)
            name = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName").first
            try:                                   # "No Kernel" until the session has started its kernel
                page.wait_for_function("k => [...document.querySelectorAll('.jp-Toolbar-kernelName')]"
                                       ".some(e => e.textContent.includes(k))", arg=notebook_files.KERNEL,
                                       timeout=120_000, polling=500)
            except Exception:   # noqa: BLE001  (the assertion below says what was shown instead)
                page.screenshot(path=str(shots / "00_no_kernel.png"))
            assert notebook_files.KERNEL in name.inner_text(), f"kernel shown: {name.inner_text()!r}"
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            # JupyterLab writes the kernel's language_info and kernelspec into the notebook once the kernel's
            # info and spec arrive (NotebookPanel._updateLanguage / _updateSpec): wait for both, then look
            page.evaluate("""async () => { const w = window.jupyterapp.shell.currentWidget;
                await w.sessionContext.ready; const k = w.sessionContext.session.kernel;
                await k.info; await k.spec; await new Promise(r => setTimeout(r, 1000)); }""")
            tab = page.locator(".lm-TabBar-tab.jp-mod-current", has_text=NB)
            assert "jp-mod-dirty" not in tab.get_attribute("class"), \
                "JupyterLab marks the notebook modified on open: python -m tg_utils.notebook_files"
            page.screenshot(path=str(shots / "01_opened.png"))

            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
            n_code = sum(c["cell_type"] == "code" for c in cells)
            page.wait_for_function(
                """n => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                          .map(e => e.textContent.trim());
                          return p.length === n && p.every(t => /^\\[\\d+\\]:$/.test(t)); }""",
                arg=n_code, timeout=RUN_TIMEOUT_MS, polling=1000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.screenshot(path=str(shots / "02_after_run_all.png"))

            dom = page.locator(".jp-Notebook .jp-Cell")
            assert dom.count() == len(cells)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
            stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert errors.count() == 0, f"error output: {errors.first.inner_text()[:1000]}"
            assert stderr.count() == 0, f"stderr box: {stderr.first.inner_text()[:1000]}"
            figures = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and "save_figure(" in "".join(c["source"])]
            assert figures
            for i in figures:
                cell = dom.nth(i)
                cell.scroll_into_view_if_needed()
                assert cell.locator(".jp-OutputArea-output img").count() >= 1, f"cell {i}: no figure shown"
            dom.nth(figures[0]).screenshot(path=str(shots / "03_first_figure.png"))
            findings = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                        and "".join(c["source"]).startswith("## Findings")]
            assert findings, "a '## Findings' section"
            cell = dom.nth(findings[0] + 1)
            cell.scroll_into_view_if_needed()
            cell.screenshot(path=str(shots / "04_findings.png"))
            md = cell.locator(".jp-OutputArea-output[data-mime-type='text/markdown']")
            assert md.count() >= 1, "the findings show as rendered Markdown (IPython.display.Markdown), not as text"
            assert md.first.inner_text().strip()
        finally:
            browser.close()
    print(f"screenshots: {shots}")
