"""Notebook 07's result types and their cache: one model's report (``ModelReport``, with its phrase
``Trajectory``) and the verified folder it is kept in.

Report cache (``report_folder``): <out_dir>/cache/attention/<spec>-<key>/, a ``tg_utils.store`` verified
folder holding every table of the report as parquet and its scalars as report.json; the key is
``store.cache_key`` of REPORT_VERSION, the weights' stamp (``ModelSpec.stamp``), every analysis parameter
and the noun list. A folder that does not verify is reported and recomputed; models without a stamp (hub
ids) are not cached.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..models import ModelSpec
from ..paths import OutputDirs
from ..store import cache_key, load_frames, save_frames, verified_folder, write_folder

REPORT_VERSION = 3     # bump when analyse_model changes what it measures (3: the paper's procedures, issue 16)
TABLES = ("norm_tokens", "norm_stats", "norm_points", "layernorm_distances", "coverage", "curves", "directions",
          "nouns", "ellipse", "bias_probes")
TRAJECTORY_TABLES = {"trajectory_coords": "coords", "trajectory_norms": "norms", "logit_lens": "lens"}
REPORT_JSON = "report.json"
_NOT_CACHE_KEYS = ("profile", "out_dir", "figures_dir", "models", "show_nouns", "show_heads", "show_head")


@dataclass(frozen=True)
class Trajectory:
    """A phrase's states projected into the embedding UMAP (see ``nb07_trajectory.trajectory_tables``)."""
    coords: pd.DataFrame          # [stage, layer, position, token, x, y, z]
    norms: pd.DataFrame           # [layer, position, token, norm, normed_norm]
    lens: pd.DataFrame            # [layer, position, token, next_token, top_token, top_id, is_self, is_next]
    background: np.ndarray        # [n_fit, 3] UMAP coordinates of the fitted embedding rows
    tokens: list[str]


@dataclass(frozen=True)
class ModelReport:
    """Everything notebook 07 measures for one model (tables carry no model column; ``combine`` adds it).
    ``notes``: what the probes leave out for this model and which of the paper's procedures do not exist
    for it (and why)."""
    spec: str
    label: str
    summary: str
    layers: list[int]
    notes: list[str]
    norm_tokens: pd.DataFrame
    norm_stats: pd.DataFrame
    norm_points: pd.DataFrame
    layernorm_distances: pd.DataFrame
    coverage: pd.DataFrame
    curves: pd.DataFrame
    directions: pd.DataFrame
    nouns: pd.DataFrame
    ellipse: pd.DataFrame
    bias_probes: pd.DataFrame
    trajectory: Trajectory | None
    n_layers: int
    d_head: int
    n_heads: int
    timings: dict = field(default_factory=dict)


def report_folder(P, spec: str, nouns: Sequence[str]) -> tuple[Path, str] | None:
    """(folder, key) of one model's cached report under <out_dir>/cache/attention/: the key is
    ``store.cache_key`` of REPORT_VERSION, the canonical spec and stamp of its weights, every analysis
    parameter and the noun list. None when the weights cannot be stamped (nothing is cached)."""
    canon, stamp = ModelSpec.parse(spec).stamp(P.out_dir)
    if stamp is None:
        return None
    params = {k: v for k, v in dataclasses.asdict(P).items() if k not in _NOT_CACHE_KEYS}
    key = cache_key("nb07-report", REPORT_VERSION, canon, stamp, params, list(nouns))
    slug = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in canon)
    return OutputDirs.at(P.out_dir).cache / "attention" / f"{slug}-{key}", key


def _report_frames(rep: ModelReport) -> dict[str, pd.DataFrame]:
    frames = {name: getattr(rep, name) for name in TABLES}
    if rep.trajectory is not None:
        frames.update({name: getattr(rep.trajectory, attr) for name, attr in TRAJECTORY_TABLES.items()})
        frames["trajectory_background"] = pd.DataFrame(rep.trajectory.background, columns=["x", "y", "z"])
    return frames


def write_report(folder: Path, key: str, rep: ModelReport) -> None:
    """Store `rep` as a verified folder: each table as <name>.parquet, the rest as report.json."""
    frames = _report_frames(rep)
    meta = {"spec": rep.spec, "label": rep.label, "summary": rep.summary, "layers": list(rep.layers),
            "notes": list(rep.notes), "n_layers": rep.n_layers, "d_head": rep.d_head, "n_heads": rep.n_heads,
            "timings": dict(rep.timings),
            "trajectory_tokens": None if rep.trajectory is None else list(rep.trajectory.tokens)}

    def write(tmp: Path) -> None:
        save_frames(tmp, frames)
        (tmp / REPORT_JSON).write_text(json.dumps(meta, indent=1))
    write_folder(folder, key, write, meta={"frames": list(frames)})


def read_report(folder: Path, key: str) -> ModelReport | None:
    """The report stored in `folder` for `key`, or None when there is none or it does not verify (a folder
    that is there but wrong is reported in one line; the caller recomputes it)."""
    manifest = verified_folder(folder, key)
    if manifest is None:
        return None
    meta = json.loads((Path(folder) / REPORT_JSON).read_text())
    frames = load_frames(Path(folder), manifest["meta"]["frames"])
    traj = None
    if meta["trajectory_tokens"] is not None:
        traj = Trajectory(**{attr: frames[name] for name, attr in TRAJECTORY_TABLES.items()},
                          background=frames["trajectory_background"].to_numpy(),
                          tokens=meta["trajectory_tokens"])
    return ModelReport(spec=meta["spec"], label=meta["label"], summary=meta["summary"], layers=meta["layers"],
                       notes=meta["notes"], **{name: frames[name] for name in TABLES}, trajectory=traj,
                       n_layers=meta["n_layers"], d_head=meta["d_head"], n_heads=meta["n_heads"],
                       timings=meta["timings"])
