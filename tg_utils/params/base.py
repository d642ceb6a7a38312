"""Notebook parameters: one dataclass per notebook, validated before any work starts.

A notebook's `parameters` cell holds literals only; the next cell calls
`P = load_params("NN_name", globals())`, which collects those names (plus any that papermill
injected), rejects unknown or ill-typed ones with a message naming the parameter, and returns the
dataclass. `run_all.sh` validates every section of `params/<profile>.yaml` the same way before it
starts a notebook, so a bad profile stops the run in its first second.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ..data.corpus import CorpusError, check_text_file
from ..paths import resolve


class ParameterError(ValueError):
    """A notebook parameter is unknown, ill-typed or out of range."""


# ---------------------------------------------------------------- type checking of literals

def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Return value (ints widened to float where a float is expected) or raise ParameterError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _check_type(name, value, a)
            except ParameterError:
                pass
        raise ParameterError(f"parameter {name!r}: {value!r} is not of type {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ParameterError(f"parameter {name!r}: {value!r} is not one of {list(args)}")
        return value
    if tp is type(None):
        if value is not None:
            raise ParameterError(f"parameter {name!r}: expected None, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter {name!r}: expected a list, got {value!r}")
        (inner,) = args[:1] or (Any,)
        return [_check_type(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParameterError(f"parameter {name!r}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_check_type(f"{name} key", k, kt): _check_type(f"{name}[{k!r}]", v, vt)
                for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"parameter {name!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"parameter {name!r}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ParameterError(f"parameter {name!r}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {tp!r} for {name!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ---------------------------------------------------------------- the base every notebook shares

@dataclass
class NotebookParams:
    """Parameters every notebook has. `out_dir` and `figures_dir` are resolved from the repo root."""
    profile: str = "default"
    out_dir: str = "outputs"
    figures_dir: str = "figures"
    seed: int = 0
    # old parameter name -> its current name; the old one is still accepted (profiles written before a rename)
    ALIASES: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, values: dict[str, Any], notebook: str = "") -> "NotebookParams":
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        where = f" of notebook {notebook}" if notebook else ""
        values = _apply_aliases(cls, dict(values), where)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ParameterError(
                f"unknown parameter {unknown[0]!r}{where}; known parameters: {', '.join(names)}")
        checked = {k: _check_type(k, v, hints[k]) for k, v in values.items()}
        obj = cls(**checked)
        obj.check()
        return obj

    def check(self) -> None:
        """Cross-field and range checks; subclasses extend it and raise ParameterError."""
        if self.profile not in available_profiles():
            raise ParameterError(f"parameter 'profile': unknown profile {self.profile!r}; "
                                 f"available: {', '.join(available_profiles())}")

    def check_inputs(self) -> None:
        """Checks of what must exist on this machine before the notebook runs (files named by parameters).
        Separate from check(): a profile for another machine (paper) still validates here. The runner
        calls it for every notebook it is about to run; subclasses extend it."""
        corpus, path = getattr(self, "corpus", None), getattr(self, "corpus_path", None)
        if (corpus in ("wikitext", "text") or str(corpus).startswith("hf:")) and path and not resolve(path).exists():
            raise ParameterError(f"parameter 'corpus_path': {resolve(path)} does not exist (corpus={corpus!r}); "
                                 f"download it or point corpus_path at a local copy")
        if corpus == "text" and path and resolve(path).is_file():
            try:
                check_text_file(resolve(path))
            except CorpusError as e:
                raise ParameterError(f"parameter 'corpus_path': {e}") from None

    def positive(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            if v is not None and v <= 0:
                raise ParameterError(f"parameter {n!r} must be positive, got {v!r}")

    @property
    def out_path(self) -> Path:
        return resolve(self.out_dir)

    @property
    def figures_path(self) -> Path:
        return resolve(self.figures_dir)


def _apply_aliases(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Rename old parameter names (cls.ALIASES) to their current ones. Both given: the old name wins only
    when the new one still holds its default (a notebook's parameters cell holds every default, papermill
    injects the profile's old name beside it); two different non-default values are an error."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for old, new in cls.ALIASES.items():
        if old not in values:
            continue
        v = values.pop(old)
        if new in values and values[new] != v and values[new] != defaults.get(new):
            raise ParameterError(f"parameters {old!r} (the old name of {new!r}) and {new!r}{where} disagree "
                                 f"({v!r} vs {values[new]!r}); give only {new!r}")
        values[new] = v
    return values


# ---------------------------------------------------------------- registry of notebooks
# tg_utils.params.notebooks registers each notebook's dataclass here (importing tg_utils.params does it): "NN_name" -> dataclass.
NOTEBOOKS: dict[str, type[NotebookParams]] = {}


def register(name: str):
    def deco(cls):
        NOTEBOOKS[name] = cls
        return cls
    return deco


def notebook_names() -> list[str]:
    return sorted(NOTEBOOKS)


def params_class(notebook: str) -> type[NotebookParams]:
    if notebook not in NOTEBOOKS:
        raise ParameterError(f"unknown notebook {notebook!r}; known: {', '.join(sorted(NOTEBOOKS))}")
    return NOTEBOOKS[notebook]


# Names IPython puts in a kernel's namespace that are not parameters.
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def load_params(notebook: str, namespace: dict[str, Any]) -> NotebookParams:
    """Validate the parameters a notebook holds in its namespace (call it right after the
    parameters cell, before any import that adds names)."""
    values = {k: v for k, v in namespace.items()
              if not k.startswith("_") and k not in _IPYTHON_NAMES
              and not isinstance(v, (types.ModuleType, types.FunctionType, type))}
    P = params_class(notebook).from_dict(values, notebook)
    P.check_inputs()
    return P


# ---------------------------------------------------------------- profiles

class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (YAML would silently keep the last)."""


def _unique_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                            "keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in resolve("params").glob("*.yaml"))


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """The sections of params/<profile>.yaml, each validated; raises ParameterError."""
    path = resolve(f"params/{profile}.yaml")
    if not path.exists():
        raise ParameterError(f"unknown profile {profile!r}: no {path.relative_to(resolve('.'))}; "
                             f"available: {', '.join(available_profiles())}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ParameterError(f"{path}: not valid YAML: {e}".replace('"<unicode string>"', path.name)) from None
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected one mapping per notebook")
    for nb, section in data.items():
        cls = params_class(nb)
        try:
            cls.from_dict({"profile": profile, **(section or {})}, nb)
        except ParameterError as e:
            raise ParameterError(f"params/{profile}.yaml, section {nb}: {e}") from None
    return {nb: dict(section or {}) for nb, section in data.items()}


__all__ = ["ParameterError", "NotebookParams", "register", "load_params", "load_profile",
           "notebook_names", "params_class", "available_profiles", "field"]
