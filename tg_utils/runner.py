"""The headless runner behind run_all.sh: papermill executes the numbered notebooks in order with
one profile's parameters, logs wall time and peak memory per notebook, and on a failure names the
executed notebook and the failing cell and exits non-zero. Before the first notebook the preflight
(tg_utils.preflight: models, data, access, devices, estimates) runs and a problem stops the run; --check
runs only the preflight. After a default run the figure tables are compared with the committed ones
(tg_utils.compare; a summary, never a failure). The rehearsal profile runs against its stand-in hub cache (tg_utils.rehearsal),
built once under <out>/rehearsal_hub (or $TG_REHEARSAL_HUB) and used offline.

    python -m tg_utils.runner --kernel token-geometry [--profile default] [--only 03 04] [--out DIR] [--check]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

from . import compare, preflight, rehearsal
from .params import ParameterError, load_profile, params_class
from .paths import resolve


def output_root(profile: str, out: str | None) -> Path:
    """Default output roots keep profiles apart: outputs/ for default, outputs/<profile>/ else."""
    if out:
        return resolve(out)
    return resolve("outputs") if profile == "default" else resolve(f"outputs/{profile}")


def figures_root(profile: str, out: str | None) -> Path:
    """The committed gallery figures/ belongs to the default profile; other runs write their
    figures under their output root."""
    return resolve("figures") if (profile == "default" and not out) else output_root(profile, out) / "figures"


def select_notebooks(only: list[str] | None) -> list[Path]:
    nbs = sorted(resolve("notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return nbs
    chosen = []
    for key in only:
        match = [p for p in nbs if p.stem.startswith(key)]
        if not match:
            raise ParameterError(f"no notebook {key!r}; available: {', '.join(p.stem[:2] for p in nbs)}")
        chosen += [p for p in match if p not in chosen]
    return sorted(chosen)


class PeakMemory:
    """Samples the resident memory of a process tree (papermill + its kernel) in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.proc = psutil.Process(pid)
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def failing_cell(executed: Path) -> str:
    """'cell In [n] (first line of its source): Error: message' from an executed notebook."""
    try:
        nb = json.loads(executed.read_text())
    except (OSError, ValueError):
        return "the executed notebook could not be read"
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                src = "".join(cell.get("source", "")).strip().splitlines()
                first = src[0][:80] if src else ""
                n = cell.get("execution_count")
                return f"cell In [{n}] ({first!r}) raised {out.get('ename')}: {out.get('evalue')}"
    return "no cell recorded an error (the kernel may have died: out of memory, or killed)"


def run_tmp(out: Path) -> Path:
    """This run's temporary folder, <out>/tmp/<pid>/: papermill's parameter files and the kernel's
    connection files live there (TMPDIR, JUPYTER_RUNTIME_DIR) and are removed when the run ends, however
    it ends; folders left by runs that no longer exist (SIGKILL) are removed when the next run starts."""
    root = out / "tmp"
    if root.is_dir():
        for d in root.iterdir():
            if d.name.isdigit() and not psutil.pid_exists(int(d.name)):
                shutil.rmtree(d, ignore_errors=True)
    tmp = root / str(os.getpid())
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def run_notebook(nb: Path, params: dict, executed: Path, kernel: str, log_output: bool,
                 tmp: Path | None = None) -> tuple[int, float, float, str]:
    """Execute one notebook with papermill in a subprocess. Returns (rc, seconds, peak GiB, stderr tail).
    tmp: the folder for temporary files (the system's when None)."""
    executed.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=tmp) as f:
        yaml.safe_dump(params, f)
        pfile = f.name
    env = None
    if tmp is not None:
        (tmp / "runtime").mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    cmd = [sys.executable, "-m", "papermill", str(nb), str(executed), "-k", kernel, "-f", pfile,
           "--cwd", str(nb.parent), "--request-save-on-cell-execute"]
    if log_output:
        cmd.append("--log-output")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    mem = PeakMemory(proc.pid)
    err_lines = []
    try:
        for line in proc.stderr:  # stream papermill's progress, keep the tail for the failure message
            sys.stderr.write(line)
            err_lines = (err_lines + [line])[-40:]
        rc = proc.wait()
    except KeyboardInterrupt:     # Ctrl-C: stop papermill and its kernel too, then tell main()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        mem.stop()
        os.unlink(pfile)
        raise
    peak = mem.stop()
    os.unlink(pfile)
    return rc, time.perf_counter() - t0, peak, "".join(err_lines)


def append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _interrupt(signum, frame):
    """`kill` (SIGTERM) stops a run like Ctrl-C: papermill and its kernel are stopped, the hint printed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (e.g. 01 03)")
    ap.add_argument("--out", help="output root (default outputs/, or outputs/<profile>/ for other profiles)")
    ap.add_argument("--kernel", default="token-geometry", help="Jupyter kernel name")
    ap.add_argument("--log-output", action="store_true", help="stream cell outputs (progress bars) to the terminal")
    ap.add_argument("--check", action="store_true",
                    help="run the preflight only (what is needed, cached, missing; estimates) and exit")
    args = ap.parse_args(argv)

    try:  # validate everything up front: profile, notebook numbers, every section's parameters
        sections = load_profile(args.profile)
        notebooks = select_notebooks(args.only)
        for nb in notebooks:
            if nb.stem not in sections:
                raise ParameterError(f"params/{args.profile}.yaml has no section for {nb.stem}; add one")
            try:
                params_class(nb.stem).from_dict({"profile": args.profile, **sections[nb.stem]}, nb.stem).check_inputs()
            except ParameterError as e:
                raise ParameterError(f"params/{args.profile}.yaml, section {nb.stem}: {e}") from None
    except ParameterError as e:
        print(f"run_all.sh: {e}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # also when started with SIGINT ignored (a
                                                               # background job of a non-interactive shell)
    out, figs = output_root(args.profile, args.out), figures_root(args.profile, args.out)
    if out.exists() and not out.is_dir():
        print(f"run_all.sh: --out {out} is a file, not a folder; give a folder (it is created if missing)",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.profile == "rehearsal" or args.profile.startswith("rehearsal-"):   # rehearsal-cuda: gpu_check.sh
            use_rehearsal_hub(out)
        rc = preflight.run(args.profile, args.only, out, brief=not args.check)
    except ParameterError as e:
        print(f"run_all.sh: {e}", file=sys.stderr)
        return 2
    if args.check:
        return rc
    if rc:
        print("[run_all] stopped before the first notebook: the preflight found the problems above (PROBLEM "
              "lines); fix them, or see everything with --check", file=sys.stderr, flush=True)
        return 2
    tmp = run_tmp(out)
    try:
        return _run_all(args, notebooks, sections, out, figs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def use_rehearsal_hub(out: Path) -> Path:
    """Build the rehearsal's stand-in hub cache (once) and point this process and its notebooks at it,
    offline."""
    hub = Path(os.environ.get("TG_REHEARSAL_HUB") or out / "rehearsal_hub")
    print(f"[run_all] rehearsal: stand-in models in the hub cache {hub}", flush=True)
    rehearsal.make(hub)
    os.environ.update(HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return hub


def _run_all(args, notebooks: list[Path], sections: dict, out: Path, figs: Path, tmp: Path) -> int:
    log_path = out / "run_log.csv"
    print(f"[run_all] profile {args.profile}: {len(notebooks)} notebooks, outputs in {out}, figures in {figs}",
          flush=True)
    passed = 0
    t_all = time.perf_counter()
    reference = reference_figures(figs, tmp) if args.profile == "default" else None
    for nb in notebooks:
        params = {**sections[nb.stem], "profile": args.profile, "out_dir": str(out), "figures_dir": str(figs)}
        executed = out / "notebooks" / nb.name
        print(f"[run_all] {nb.stem} ...", flush=True)
        try:
            rc, secs, peak, tail = run_notebook(nb, params, executed, args.kernel, args.log_output, tmp)
        except KeyboardInterrupt:
            print(f"\n[run_all] interrupted during {nb.stem}. Finished work is kept (checkpoints, caches and "
                  f"tables are written atomically): run the same command again to resume.", file=sys.stderr,
                  flush=True)
            return 130
        status = "ok" if rc == 0 else "FAILED"
        append_log(log_path, {"finished": datetime.now().isoformat(timespec="seconds"), "profile": args.profile,
                              "notebook": nb.stem, "status": status, "wall_s": round(secs, 1),
                              "peak_rss_gib": round(peak, 2)})
        print(f"[run_all] {nb.stem}: {status} in {secs:.1f} s, peak memory {peak:.2f} GiB", flush=True)
        if rc != 0:
            lines = tail.strip().splitlines()
            reason = failing_cell(executed) if executed.exists() else (lines[-1] if lines else "papermill failed")
            print(f"[run_all] FAILED {nb.stem}: {reason}\n[run_all] executed notebook: {executed}",
                  file=sys.stderr, flush=True)
            print(f"{passed} passed, 1 failed")
            return 1
        passed += 1
    print(f"[run_all] all done in {time.perf_counter() - t_all:.0f} s; log: {log_path}")
    print_comparison(reference, figs, notebooks, args.profile)
    print(f"{passed} passed, 0 failed")
    return 0


def reference_figures(figs: Path, tmp: Path) -> Path:
    """The figures a default run is compared with: the repository's figures/, or, when the run writes
    into figures/ itself, a copy of its CSVs taken before the first notebook (under the run's tmp/)."""
    committed = resolve("figures")
    if not committed.is_dir() or figs.resolve() != committed.resolve():
        return committed
    copy = tmp / "committed_figures"
    for p in committed.rglob("*.csv"):
        (copy / p.relative_to(committed)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, copy / p.relative_to(committed))
    return copy


def print_comparison(reference: Path | None, figs: Path, notebooks: list[Path], profile: str) -> None:
    """Print how the run's figure tables compare with the committed ones (tg_utils.compare): one line per
    table beyond tolerance and the summary. Never fails the run."""
    if reference is None:
        print(f"[compare] not compared with the committed figures: they come from the default profile, "
              f"this run used {profile}", flush=True)
        return
    try:
        results = compare.compare_dirs(reference, figs, [f"{nb.stem}/" for nb in notebooks])
    except Exception as e:   # noqa: BLE001  (a finished run stays a success whatever the comparison meets)
        print(f"[compare] the comparison with the committed figures failed: {type(e).__name__}: {e}", flush=True)
        return
    for line in compare.report(results, prefix="[compare] "):
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
