"""The activation cache: extracted states on disk as safetensors shards with a JSON manifest.

    st = cached_states("smollm2-135m", prompts, layers=None, positions="all", dtype="float16")
    # first call: loads the model, extracts chunk by chunk, writes each shard as it is done;
    # later calls: read the shards (the model is not even loaded); an interrupted run resumes where it stopped.

Layout (one folder per cache key):

    <out_dir>/cache/states/<model slug>/<key hash>/
        manifest.json            the key, prompt lengths, layers, and one entry per finished chunk:
                                 file, prompt range, bytes, sha256, tensor shapes and dtypes
        chunk_00000.safetensors  prompts [0, chunk_size): "states", "loss", "lengths"
        chunk_00001.safetensors  ...

The key is the model spec (a toy spec resolved to its step), revision, the weights' dtype, a stamp of the
model source (checkpoint file size and mtime / wheel version / weight files), a sha256 of the prompt set
(token ids), the layers, positions, the storage dtype, the chunk size and whether the loss is computed (a
cache filled with compute_loss=False holds NaN losses: never served to a caller who wants them). Any change
gives another folder.

Shards hold, for positions="all", ``states`` [n_layers_sel, sum of the chunk's prompt lengths, d] (prompts
concatenated along positions; ``lengths`` splits them) and for positions="last" ``states``
[n_prompts_in_chunk, n_layers_sel, d]; ``loss`` [n_prompts_in_chunk] float32 beside them.

Every shard and the manifest are written atomically (temporary file, then rename); the manifest lists a
chunk only after its shard is in place. A shard whose size, sha256 (verify="hash", the default) or tensor
shapes disagree with the manifest, or that cannot be parsed, is deleted and recomputed, never read.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .extract import States, _as_id_lists, extract_states, resolve_layers
from .models import OFFLINE_SPECS, LoadedModel, ModelSpec, converted_dir, load_model
from .models.load import torch_dtype
from .paths import OutputDirs, atomic_path, resolve, write_text_atomic

CACHE_FORMAT = "tg-states-cache-v1"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64"}


def prompts_hash(prompts: Sequence[Sequence[int]]) -> str:
    """sha256 of a prompt set (token ids, in order)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([int(t) for t in p], separators=(",", ":")).encode())
        h.update(b";")
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _read_header(path: Path) -> dict | None:
    """{name: [dtype, shape]} from a safetensors file's header, or None if the header is unreadable or the
    data it describes does not end exactly at the end of the file (truncated / padded)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return None
            n = int.from_bytes(raw, "little")
            if n > size - 8:
                return None
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if 8 + n + end != size:
            return None
        return {k: [v["dtype"], list(v["shape"])] for k, v in sorted(header.items())}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[:80] or "model"


def source_stamp(spec: str, out_dir="outputs") -> tuple[str, Any]:
    """(canonical spec, stamp of the weights it names), without loading the model (see ModelSpec.stamp)."""
    return ModelSpec.parse(spec).stamp(out_dir)


@dataclass
class StateCache:
    """One cache entry (a folder). Build with StateCache.open(...); see cached_states."""
    path: Path
    key: dict
    prompts: list[list[int]]
    chunk_size: int
    verify: str = "hash"
    out_dir: Any = "outputs"

    def __post_init__(self):
        # shards hashed (or written) by this object: (size, mtime_ns, sha256) -> not hashed again on load
        self._verified: dict[int, tuple] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, spec: str, prompts, layers=None, positions: str = "all", dtype="float32",
             out_dir="outputs", revision: str | None = None, model_dtype="float32", chunk_size: int = 32,
             verify: str = "hash", compute_loss: bool = True) -> "StateCache":
        if positions not in ("all", "last"):
            raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
        if verify not in ("hash", "size"):
            raise ValueError("verify must be 'hash' (size + sha256) or 'size' (size + shapes only)")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        prompts = _as_id_lists(prompts)
        canon, stamp = source_stamp(spec, out_dir)
        key = {
            "format": CACHE_FORMAT, "spec": canon, "revision": revision,
            "model_dtype": _DTYPE_NAMES.get(torch_dtype(model_dtype), str(model_dtype)), "source": stamp,
            "prompts_sha256": prompts_hash(prompts), "n_prompts": len(prompts),
            "layers": "all" if layers is None else sorted({int(l) for l in ([layers] if isinstance(layers, int)
                                                                                 else layers)}),
            "positions": positions, "dtype": _DTYPE_NAMES[torch_dtype(dtype)], "chunk_size": int(chunk_size),
            "compute_loss": bool(compute_loss),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = OutputDirs.at(out_dir).cache / "states" / _slug(canon) / digest
        return cls(path=path, key=key, prompts=prompts, chunk_size=int(chunk_size), verify=verify,
                   out_dir=out_dir)

    # ------------------------------------------------------------------ manifest and chunks
    @property
    def n_chunks(self) -> int:
        return -(-len(self.prompts) // self.chunk_size)

    def chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk_size, min(len(self.prompts), (c + 1) * self.chunk_size)

    def shard_path(self, c: int) -> Path:
        return self.path / f"chunk_{c:05d}.safetensors"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def read_manifest(self) -> dict:
        """The manifest, or a fresh one if it is missing, unreadable or for another key (then the folder is
        cleared: nothing in it can be trusted)."""
        fresh = {"format": CACHE_FORMAT, "key": self.key, "chunks": {}}
        mp = self.manifest_path
        if not mp.exists():
            return fresh
        try:
            m = json.loads(mp.read_text())
        except ValueError:
            m = None
        if not isinstance(m, dict) or m.get("key") != self.key or not isinstance(m.get("chunks"), dict):
            shutil.rmtree(self.path, ignore_errors=True)
            return fresh
        return m

    def _write_manifest(self, m: dict) -> None:
        write_text_atomic(self.manifest_path, json.dumps(m, indent=1, sort_keys=True) + "\n")

    def _check_chunk(self, c: int, entry: dict, hash_check: bool = True) -> bool:
        """Whether the shard on disk matches its manifest entry: file size, sha256 (verify="hash"; once per
        object and file version), the safetensors header (names, dtypes, shapes, data extent = file size)
        and the prompt range. Reads the header only."""
        p = self.shard_path(c)
        start, stop = self.chunk_range(c)
        try:
            stat = p.stat()
            if entry.get("file") != p.name or stat.st_size != entry["bytes"]:
                return False
            if [entry.get("start"), entry.get("stop")] != [start, stop]:
                return False
            if entry.get("lengths") != [len(q) for q in self.prompts[start:stop]]:
                return False
            header = _read_header(p)
            if header is None or header != entry.get("tensors"):
                return False
            seen = (stat.st_size, stat.st_mtime_ns, entry["sha256"])
            if hash_check and self.verify == "hash" and self._verified.get(c) != seen:
                if _sha256_file(p) != entry["sha256"]:
                    return False
                self._verified[c] = seen
        except (OSError, KeyError, TypeError):
            return False
        return True

    def status(self) -> tuple[dict, list[int]]:
        """(manifest, indices of chunks that are missing or invalid)."""
        m = self.read_manifest()
        missing = []
        for c in range(self.n_chunks):
            e = m["chunks"].get(str(c))
            if e is None or not self._check_chunk(c, e):
                missing.append(c)
        return m, missing

    def _write_chunk(self, c: int, st: States, m: dict) -> None:

        start, stop = self.chunk_range(c)
        if st.positions == "all":
            states = torch.cat(st.states, dim=1) if st.states else torch.empty(0)
        else:
            states = torch.stack(st.states)
        tensors = {"states": states.contiguous(), "loss": st.loss.to(torch.float32).contiguous(),
                   "lengths": torch.tensor(st.lengths, dtype=torch.int64)}
        p = self.shard_path(c)
        with atomic_path(p) as tmp:
            save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "start": str(start),
                                                   "stop": str(stop)})
            size, sha = tmp.stat().st_size, _sha256_file(tmp)
        self._verified[c] = (size, p.stat().st_mtime_ns, sha)
        m["chunks"][str(c)] = {
            "file": p.name, "start": start, "stop": stop, "bytes": size, "sha256": sha,
            "lengths": st.lengths, "tensors": _read_header(p),
        }
        m["layers"], m["layer_names"] = st.layers, st.layer_names
        self._write_manifest(m)

    # ------------------------------------------------------------------ the work
    def fill(self, model: LoadedModel | None = None, batch_size: int = 8, progress: bool = True,
             load_kwargs: dict | None = None, **extract_kwargs) -> dict:
        """Compute and write every missing or invalid chunk (loading the model only if one is missing).
        Returns the manifest."""

        m, missing = self.status()
        for c in missing:                      # never read a bad shard, and do not leave it lying around
            self.shard_path(c).unlink(missing_ok=True)
            m["chunks"].pop(str(c), None)
        if not missing:
            return m
        if model is None:
            kw = dict(revision=self.key["revision"], dtype=self.key["model_dtype"], out_dir=self.out_dir)
            kw.update(load_kwargs or {})
            model = load_model(self.key["spec"], **kw)
        layers = None if self.key["layers"] == "all" else self.key["layers"]
        m.setdefault("layers", resolve_layers(model, layers))
        m["lengths"] = [len(p) for p in self.prompts]
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_manifest(m)
        for c in tqdm(missing, desc=f"cache {self.key['spec']}", unit="chunk", disable=not progress):
            start, stop = self.chunk_range(c)
            st = extract_states(model, self.prompts[start:stop], layers=layers,
                                positions=self.key["positions"], dtype=self.key["dtype"],
                                batch_size=batch_size, progress=False,
                                compute_loss=self.key["compute_loss"], **extract_kwargs)
            self._write_chunk(c, st, m)
        return m

    def load(self) -> States:
        """Read every chunk (all must be present and valid: call fill first). Shards are read into memory
        (not memory-mapped), so a file changed on disk later cannot corrupt the returned tensors."""

        m = self.read_manifest()
        states, losses = [], []
        for c in range(self.n_chunks):
            e = m["chunks"].get(str(c))
            if e is None or not self._check_chunk(c, e, hash_check=False):
                raise RuntimeError(f"cache chunk {c} in {self.path} is missing or invalid; call fill() first")
            p = self.shard_path(c)
            stat = p.stat()
            data = p.read_bytes()
            if len(data) != e["bytes"] or (self.verify == "hash" and
                                           self._verified.get(c) != (stat.st_size, stat.st_mtime_ns, e["sha256"])
                                           and hashlib.sha256(data).hexdigest() != e["sha256"]):
                raise RuntimeError(f"cache chunk {c} in {self.path} changed on disk; call fill() again")
            t = load_bytes(data)
            del data
            if self.key["positions"] == "all":
                states.extend(t["states"].split(t["lengths"].tolist(), dim=1))
            else:
                states.extend(t["states"].unbind(0))
            losses.append(t["loss"])
        layers = m["layers"]
        return States(spec=self.key["spec"], layers=layers, positions=self.key["positions"], states=states,
                      loss=torch.cat(losses), lengths=[len(p) for p in self.prompts],
                      layer_names=m.get("layer_names", []))

    def footprint(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*") if f.is_file()) if self.path.exists() else 0


def cached_states(model: str | LoadedModel, prompts: Sequence[Sequence[int]], layers=None,
                  positions: str = "all", dtype="float32", out_dir="outputs", revision: str | None = None,
                  model_dtype="float32", chunk_size: int = 32, batch_size: int = 8, verify: str = "hash",
                  progress: bool = True, load_kwargs: dict | None = None, load: bool = True,
                  compute_loss: bool = True, **extract_kwargs) -> States | StateCache:
    """extract_states through the on-disk cache (see the module docstring).

    model: a spec string (the model is loaded only if some chunk must be computed; revision / model_dtype /
      load_kwargs are passed to load_model) or a LoadedModel (its spec, revision and dtype form the key).
    chunk_size: prompts per shard (the unit of resume). verify: "hash" (size + sha256 + shapes) or "size".
    load: False returns the filled StateCache without reading the states into memory.
    """
    if isinstance(model, LoadedModel):
        spec, revision, model_dtype, lm = model.desc.spec, model.desc.revision, model.desc.dtype, model
    else:
        spec, lm = str(model), None
    cache = StateCache.open(spec, prompts, layers=layers, positions=positions, dtype=dtype, out_dir=out_dir,
                            revision=revision, model_dtype=model_dtype, chunk_size=chunk_size, verify=verify,
                            compute_loss=compute_loss)
    cache.fill(lm, batch_size=batch_size, progress=progress, load_kwargs=load_kwargs, **extract_kwargs)
    return cache.load() if load else cache


def cache_footprint(out_dir="outputs", include_models: bool = True) -> dict:
    """Bytes on disk of the activation cache under <out_dir>/cache/states, per entry and in total, and of
    the converted offline models (model_cache_dir()). Returns {"total_bytes", "states_bytes",
    "models_bytes", "entries": [{spec, key, positions, dtype, n_prompts, chunks_done, n_chunks, bytes}]}."""
    root = resolve(out_dir) / "cache" / "states"
    entries = []
    for mp in sorted(root.glob("*/*/manifest.json")) if root.exists() else []:
        try:
            m = json.loads(mp.read_text())
            k = m["key"]
        except (ValueError, KeyError):
            continue
        size = sum(f.stat().st_size for f in mp.parent.iterdir() if f.is_file())
        n_chunks = -(-k["n_prompts"] // k["chunk_size"])
        entries.append({"spec": k["spec"], "key": mp.parent.name, "positions": k["positions"],
                        "dtype": k["dtype"], "layers": k["layers"], "n_prompts": k["n_prompts"],
                        "chunks_done": len(m.get("chunks", {})), "n_chunks": n_chunks, "bytes": size})
    states_bytes = sum(e["bytes"] for e in entries)
    models_bytes = 0
    if include_models:
        for name in OFFLINE_SPECS:
            d = converted_dir(name)
            if d.is_dir():
                models_bytes += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return {"total_bytes": states_bytes + models_bytes, "states_bytes": states_bytes,
            "models_bytes": models_bytes, "entries": entries}


def format_footprint(fp: dict, by: str = "model") -> str:
    """A few lines for a notebook, in MB: per model (default: entries, prompts and bytes summed) or per
    cache entry (by="entry"), then the totals."""
    if by not in ("model", "entry"):
        raise ValueError("by must be 'model' or 'entry'")
    lines = []
    if by == "entry":
        lines.append(f"{'model':32s} {'positions':9s} {'dtype':8s} {'prompts':>7s} {'chunks':>9s} {'MB':>9s}")
        for e in fp["entries"]:
            lines.append(f"{e['spec'][:32]:32s} {e['positions']:9s} {e['dtype']:8s} {e['n_prompts']:7d} "
                         f"{e['chunks_done']:4d}/{e['n_chunks']:<4d} {e['bytes'] / 1e6:9.1f}")
    else:
        groups: dict[str, list] = {}
        for e in fp["entries"]:
            groups.setdefault(e["spec"], []).append(e)
        lines.append(f"{'model':32s} {'entries':>7s} {'complete':>8s} {'prompts':>8s} {'MB':>9s}")
        for spec, es in groups.items():
            done = sum(e["chunks_done"] == e["n_chunks"] for e in es)
            lines.append(f"{spec[:32]:32s} {len(es):7d} {done:8d} {sum(e['n_prompts'] for e in es):8d} "
                         f"{sum(e['bytes'] for e in es) / 1e6:9.1f}")
    lines.append(f"activation cache: {fp['states_bytes'] / 1e6:.1f} MB; converted models: "
                 f"{fp['models_bytes'] / 1e6:.1f} MB; total {fp['total_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)
