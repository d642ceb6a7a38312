"""Data sets by name from the Hugging Face hub: a corpus "hf:<owner>/<name>[:<config>]" (e.g.
"hf:NeelNanda/pile-10k", "hf:Salesforce/wikitext:wikitext-2-raw-v1"; "wikitext" is an alias of
Salesforce/wikitext). One path for every source: the repository's parquet files are found with
huggingface_hub's snapshot_download (downloaded once into the hub cache, or read from it offline, or a
local folder holding a copy of the repository's files), then read with `datasets` (its parquet builder).
The rehearsal puts stand-ins of the same layout in its hub cache, so it runs this very path offline.

Layouts read: <config>/<split>-*.parquet (Salesforce/wikitext), data/<split>-*.parquet
(NeelNanda/pile-10k), <config>/<split>/*.parquet (the hub's refs/convert/parquet branch).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, snapshot_download

HF_PREFIX = "hf:"
ALIASES = {"wikitext": "Salesforce/wikitext"}   # the legacy id of the WikiText repository on the hub
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubDataError(ValueError):
    """A data set name that cannot be parsed, or a data set that is not there."""


@dataclass(frozen=True)
class Known:
    """What is known of a hub data set before it is downloaded (shown by --check)."""
    rows: dict[str, int]        # split -> rows (documents; WikiText: lines)
    download_mb: float          # the parquet files of the repository (the config's only)
    source: str                 # where these numbers come from


# Sizes from the hub's own pages (files and dataset cards), as of 2025: constants, shown by --check.
KNOWN = {
    ("NeelNanda/pile-10k", None): Known(
        {"train": 10_000}, 33.3,
        "the first 10k documents of the Pile; data/train-00000-of-00001-4746b8785c874cc7.parquet, 33.3 MB "
        "(huggingface.co/datasets/NeelNanda/pile-10k, files)"),
    ("Salesforce/wikitext", "wikitext-2-raw-v1"): Known(
        {"train": 36_718, "validation": 3_760, "test": 4_358}, 7.75,
        "WikiText-2 raw: parquet 6.36 + 0.66 + 0.73 MB (huggingface.co/datasets/Salesforce/wikitext, files), "
        "13.5 MB of text (dataset card); its validation and test splits are those of WikiText-103"),
    ("Salesforce/wikitext", "wikitext-103-raw-v1"): Known(
        {"train": 1_801_350, "validation": 3_760, "test": 4_358}, 310.0,
        "WikiText-103 raw: ~310 MB of parquet (an estimate: two train shards), 549 MB of text (dataset card)"),
}


@dataclass(frozen=True)
class HubData:
    """One hub data set (and config) by name."""
    repo: str
    config: str | None = None

    @classmethod
    def parse(cls, text: str) -> "HubData":
        """"hf:<owner>/<name>[:<config>]" (or without the hf: prefix)."""
        body = text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text
        repo, _, config = body.partition(":")
        repo = ALIASES.get(repo, repo)
        if not _REPO.match(repo) or (config and not re.fullmatch(r"[\w.-]+", config)):
            raise HubDataError(f"{text!r} is not a hub data set name; write hf:<owner>/<name>[:<config>], e.g. "
                               f"hf:NeelNanda/pile-10k or hf:Salesforce/wikitext:wikitext-2-raw-v1")
        return cls(repo, config or None)

    @property
    def name(self) -> str:
        return f"{HF_PREFIX}{self.repo}" + (f":{self.config}" if self.config else "")

    @property
    def known(self) -> Known | None:
        return KNOWN.get((self.repo, self.config))

    @property
    def patterns(self) -> list[str]:
        """What snapshot_download fetches: the config's parquet files (every parquet file without one)."""
        return [f"{self.config}/*.parquet", f"{self.config}/**/*.parquet"] if self.config else ["*.parquet"]

    @property
    def is_wikitext(self) -> bool:
        """Rows are WikiText lines (articles cut at ' = Title = ' headings), not whole documents."""
        return (self.config or "").startswith("wikitext")


def is_hub_name(source: str | None) -> bool:
    return bool(source) and source.startswith(HF_PREFIX)


def hub_cache() -> Path:
    """The hub cache this process uses, read from the environment now (the runner points HF_HUB_CACHE at the
    rehearsal's cache after huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def split_files(folder: Path, hd: HubData) -> dict[str, list[Path]]:
    """split -> its parquet files under `folder` (a snapshot of the repository, a local copy, or a local copy
    of the config's folder), sorted; none when the config's folder is not there."""
    root = folder
    if hd.config and folder.name != hd.config:
        root = folder / hd.config
        if not root.is_dir():
            return {}
    out: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*.parquet")):
        m = re.match(r"^([A-Za-z]+)-\d+", p.name)         # train-00000-of-00001[-hash].parquet
        split = m.group(1) if m else p.parent.name        # <split>/0000.parquet
        out.setdefault(split, []).append(p)
    return out


def fetch_help(hd: HubData) -> str:
    return (f"fetch it once on a machine with a network (`python -m tg_utils.preflight --profile paper "
            f"--download`, or `bash run_all.sh --profile paper --check --download`), or copy the files of "
            f"huggingface.co/datasets/{hd.repo} to a folder and set corpus_path to it")


def locate(hd: HubData, local: str | Path | None = None, download: bool = False) -> dict[str, list[Path]]:
    """The parquet files of each split: from `local` (a folder with the repository's files), else from the
    hub cache (download=True: fetched first when missing and the hub can be reached)."""
    if local is not None:
        folder = Path(local)
        if not folder.is_dir():
            raise HubDataError(f"{hd.name}: corpus_path {folder} is not a folder; {fetch_help(hd)}")
    else:
        cache = hub_cache()
        try:
            folder = Path(snapshot_download(hd.repo, repo_type="dataset", allow_patterns=hd.patterns,
                                            cache_dir=str(cache), local_files_only=offline() or not download))
        except Exception as e:           # not cached (offline), or the hub refused: one line with the fix
            why = "HF_HUB_OFFLINE=1" if offline() else f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            raise HubDataError(f"data set {hd.name} is not in the hub cache {cache} ({why}); "
                               f"{fetch_help(hd)}") from None
    files = split_files(folder, hd)
    if not files and local is not None:
        raise HubDataError(f"{hd.name}: no parquet files under {folder}" + (f"/{hd.config}" if hd.config else "")
                           + f"; {fetch_help(hd)}")
    if not files:                    # the repository is cached, but not this config's files
        raise HubDataError(f"data set {hd.name} is not in the hub cache {hub_cache()} (its snapshot there holds "
                           f"no parquet files of it); {fetch_help(hd)}")
    return files


def cached(hd: HubData) -> bool:
    """Whether the hub cache holds the data set (no network asked)."""
    try:
        locate(hd)
    except HubDataError:
        return False
    return True


def load_texts(hd: HubData, local: str | Path | None = None) -> dict[str, list[str]]:
    """split -> the `text` column, in the repository's row order, read with `datasets`."""
    files = locate(hd, local, download=not offline())
    import datasets            # heavy optional dependency: only for a data set by name
    ds = datasets.load_dataset("parquet", data_files={s: [str(p) for p in ps] for s, ps in files.items()})
    for split in ds:
        if "text" not in ds[split].column_names:
            raise HubDataError(f"{hd.name} split {split!r} has no 'text' column (columns: "
                               f"{ds[split].column_names}); a corpus needs one")
    return {split: ds[split]["text"] for split in ds}
