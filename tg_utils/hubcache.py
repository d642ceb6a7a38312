"""The local Hugging Face hub cache, read and written without a network: where a (repo, revision) snapshot
lies and whether its weights are complete, whether a gated repo is accessible with the current token,
fetching what is missing (snapshot_download), and writing a snapshot in the cache's own layout (the
rehearsal's stand-in models).

Layout (huggingface_hub's): <cache>/models--<org>--<name>/{blobs/<sha256>, snapshots/<commit>/<file> ->
../../blobs/<sha256>, refs/<revision> holding <commit>}. A revision resolves offline through refs/.

Access marker (simulation, used by the rehearsal): <repo folder>/tg_access.json = {"gated": bool,
"access": bool}; when present it answers the access check instead of the hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, model_info, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

ACCESS_MARKER = "tg_access.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
KNOWN_GATED = {"meta-llama/Meta-Llama-3-8B", "meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1"}
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


def hub_cache_dir() -> Path:
    """The hub cache this process would use, read from the environment now (HF_HUB_CACHE, HF_HOME/hub),
    not from huggingface_hub's constants fixed at its import (the runner points HF_HUB_CACHE elsewhere for
    the rehearsal after importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def offline_reason() -> str | None:
    """Why the hub cannot be asked ('HF_HUB_OFFLINE=1', 'no network'), or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0"):
        return "HF_HUB_OFFLINE=1"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return "no network"
    return None


def repo_folder(cache: Path, repo: str) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


@dataclass(frozen=True)
class Snapshot:
    """What the cache holds of one (repo, revision): the snapshot folder (None: nothing), whether the
    weights and a tokenizer are complete, what is missing, the bytes present and the config."""
    folder: Path | None
    complete: bool
    missing: str
    bytes: int
    config: dict | None


def snapshot(repo: str, revision: str | None, cache: Path) -> Snapshot:
    """The cached snapshot of repo@revision (default 'main'), offline."""
    found = try_to_load_from_cache(repo, "config.json", cache_dir=str(cache), revision=revision or "main")
    if not isinstance(found, str):
        return Snapshot(None, False, "not in the cache", 0, None)
    snap = Path(found).parent
    size = sum(f.stat().st_size for f in snap.iterdir() if f.exists())
    try:
        config = json.loads(Path(found).read_text())
    except ValueError:
        config = None
    missing = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snap / index).exists():
            shards = set(json.loads((snap / index).read_text()).get("weight_map", {}).values())
            lost = sorted(s for s in shards if not (snap / s).exists())
            missing += [f"{len(lost)} of {len(shards)} weight shards"] if lost else []
            break
    else:
        if not any((snap / w).exists() for w in WEIGHT_FILES):
            missing.append("the weights")
    if not any((snap / t).exists() for t in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("the tokenizer")
    return Snapshot(snap, not missing, " and ".join(missing), size, config)


@dataclass(frozen=True)
class Access:
    """The answer of the access check: state 'public' | 'granted' | 'denied' | 'missing' | 'unchecked'."""
    state: str
    text: str

    @property
    def problem(self) -> bool:
        return self.state in ("denied", "missing")


def access(repo: str, revision: str | None, cache: Path, offline: str | None) -> Access:
    """Whether the current token may download repo@revision: the rehearsal's marker when present, else
    huggingface_hub.model_info with the stored token (no network: 'unchecked')."""
    marker = repo_folder(cache, repo) / ACCESS_MARKER
    if marker.exists():
        m = json.loads(marker.read_text())
        if not m.get("gated"):
            return Access("public", "public (simulated)")
        return (Access("granted", "gated, access granted (simulated)") if m.get("access") else
                Access("denied", f"gated, and the current token has no access (simulated): request access at "
                                 f"https://huggingface.co/{repo}, then `hf auth login`"))
    if offline:
        return Access("unchecked", f"not checked: {offline}")
    try:
        info = model_info(repo, revision=revision, token=None)
    except GatedRepoError:
        return Access("denied", f"gated, and the current token has no access: request access at "
                                f"https://huggingface.co/{repo}, then `hf auth login`")
    except RevisionNotFoundError:
        return Access("missing", f"the hub has no revision {revision!r} of {repo}")
    except RepositoryNotFoundError:
        return Access("missing", f"the hub has no repository {repo} (or it is private and the token has no access)")
    except (HfHubHTTPError, OSError) as e:
        return Access("unchecked", f"not checked: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return Access("granted", "gated, access granted") if info.gated else Access("public", "public")


def download(repo: str, revision: str | None, cache: Path) -> Path:
    """Fetch a snapshot's config, tokenizer and weights (safetensors when the repo has them, else .bin)."""
    path = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), allow_patterns=DOWNLOAD_PATTERNS))
    if not snapshot(repo, revision, cache).complete:                 # an older repo without safetensors
        path = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache),
                                      allow_patterns=DOWNLOAD_PATTERNS + ["*.bin"]))
    return path


def download_wikitext(folder: Path) -> None:
    """WikiText-2 raw as parquet files (train-*, validation-*, test-* under `folder`, the layout
    tg_utils.data.corpus reads) from the hub dataset Salesforce/wikitext."""
    snapshot_download("Salesforce/wikitext", repo_type="dataset", allow_patterns=[f"{folder.name}/*"],
                      local_dir=str(folder.parent))


def write_snapshot(cache: Path, repo: str, revisions: list[str], files: Path, repo_type: str = "model") -> str:
    """Put the files of folder `files` (and its subfolders) into the cache as one snapshot of `repo` (a
    model, or with repo_type="dataset" a data set: datasets--<org>--<name>) that every name in `revisions`
    resolves to (refs/<revision>); returns its commit hash (sha1 of the files' hashes, so the same files
    give the same commit). Blobs are named by sha256 and linked from the snapshot."""
    root = repo_folder(cache, repo) if repo_type == "model" else cache / f"datasets--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    hashes = {}
    for f in sorted(files.rglob("*")):
        if f.is_file():
            hashes[f.relative_to(files).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    commit = hashlib.sha1(json.dumps(sorted(hashes.items())).encode()).hexdigest()
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, h in hashes.items():
        blob = root / "blobs" / h
        if not blob.exists():
            shutil.copyfile(files / name, blob)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    for rev in revisions:
        (root / "refs" / rev).write_text(commit)
    return commit
