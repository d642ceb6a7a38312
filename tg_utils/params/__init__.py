"""Notebook parameters: the validation machinery and profiles (base.py) and one dataclass per notebook
(notebooks.py; notebook 06 in trajectory.py; registered by notebook name on import)."""
from . import notebooks  # noqa: F401  (fills the registry)
from . import trajectory  # noqa: F401  (notebook 06)
from .base import (NOTEBOOKS, NotebookParams, ParameterError, available_profiles, field, load_params,
                   load_profile, notebook_names, params_class, register)
from .notebooks import check_spec

__all__ = ["NOTEBOOKS", "NotebookParams", "ParameterError", "available_profiles", "check_spec", "field",
           "load_params", "load_profile", "notebook_names", "params_class", "register"]
