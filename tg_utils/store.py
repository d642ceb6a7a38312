"""Verified caches: one key function, and folders written atomically with a manifest that holds each
file's sha256 and the key that produced it, checked on every read (no pickle anywhere).

    key = cache_key("geometry", 2, spec, stamp, prompts_sha)       # one hash of everything that matters
    df = cached_table(out.cache / "geometry" / key, key, compute)  # read back if verified, else compute

A folder whose manifest is missing, whose key differs or whose files do not hash to the manifest is
reported in one line naming it and recomputed; a reader never sees a half-written folder (it is
written beside its final name and renamed into place)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd

MANIFEST = "manifest.json"
FORMAT = "tg-verified-folder-v1"
_BLOCK = 1 << 22


def cache_key(*parts: Any, length: int = 20) -> str:
    """sha256 (hex, first `length` characters) of the canonical JSON of `parts` (sorted keys; objects
    that JSON does not know are written with str())."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _report(folder: Path, why: str) -> None:
    print(f"[tg_utils.store] {folder}: {why}; recomputing it")


def verified_folder(folder: str | os.PathLike, key: str, report: bool = True) -> dict | None:
    """The manifest of `folder` when it exists, was written for `key` and every file matches its hash;
    else None (with a one-line report when something is there but wrong)."""
    folder = Path(folder)
    man = folder / MANIFEST
    if not folder.exists():
        return None
    try:
        manifest = json.loads(man.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("not a manifest of this format")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        if report:
            _report(folder, f"unreadable manifest ({type(e).__name__})")
        return None
    if manifest.get("key") != key:
        if report:
            _report(folder, "written for other inputs (key differs)")
        return None
    for name, info in files.items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            if report:
                _report(folder, f"{name} does not match its manifest (missing, truncated or edited)")
            return None
    return manifest


def write_folder(folder: str | os.PathLike, key: str, write: Callable[[Path], None],
                 meta: dict | None = None) -> dict:
    """Run `write(tmp)` to fill a temporary folder beside `folder`, add the manifest (every file's size and
    sha256, the key, `meta`), and rename it into place (replacing an old folder). Returns the manifest."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(tmp)
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "key": key, "files": files, "meta": meta or {}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.chmod(tmp, 0o755)
        if folder.exists():                        # stale or corrupt: move aside, then replace
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.rename(folder, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def save_frames(folder: Path, frames: dict[str, pd.DataFrame]) -> None:
    """Each DataFrame as <name>.parquet (types and values round-trip exactly)."""
    for name, df in frames.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)


def load_frames(folder: Path, names) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in names}


def cached_frames(folder: str | os.PathLike, key: str,
                  compute: Callable[[], dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """A dict of DataFrames read back from `folder` when verified for `key`, else computed and stored."""
    folder = Path(folder)
    manifest = verified_folder(folder, key)
    if manifest is not None:
        return load_frames(folder, manifest["meta"]["frames"])
    frames = compute()
    write_folder(folder, key, lambda tmp: save_frames(tmp, frames), meta={"frames": list(frames)})
    return frames


def cached_table(folder: str | os.PathLike, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """One DataFrame, cached as cached_frames does."""
    return cached_frames(folder, key, lambda: {"table": compute()})["table"]
