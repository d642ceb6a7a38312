"""Input handling shared by the metrics: validation of arrays and tensors, dtype and torch helpers,
reshaping of batched clouds, and the one-thread scope of the CPU neighbour tables."""
from __future__ import annotations

import contextlib
import functools

import numpy as np
from threadpoolctl import ThreadpoolController

try:  # the metrics run on numpy alone; torch tensors are accepted when torch is installed
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the project
    torch = None


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _check_finite(x, name: str) -> None:
    if _is_torch(x):
        ok = bool(torch.isfinite(x).all())
    else:        # min and max carry any NaN or inf, without a boolean array as large as x
        ok = x.size == 0 or bool(np.isfinite(x.min()) and np.isfinite(x.max()))
    if not ok:
        raise ValueError(f"{name} contains NaN or inf values; drop or repair those states (e.g. "
                         "check the extraction dtype for overflow) before computing metrics.")


def _validated(x, name: str):
    """x as a numpy array (or a torch tensor kept on its accelerator), checked to hold finite real
    numbers; its float dtype is kept (clouds are cast to float64 one at a time)."""
    if _is_torch(x):
        x = x.detach()
        if x.device.type == "cpu":
            x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()   # numpy has no bfloat16
    else:
        x = np.asarray(x)
    if _is_torch(x):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}.")
    elif not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}.")
    _check_finite(x, name)
    return x


def _f64(x):
    """float64 copy of an array or tensor (a no-op for float64 numpy arrays)."""
    return x.to(torch.float64) if _is_torch(x) else np.asarray(x, dtype=np.float64)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _clouds(X, name: str = "X"):
    """Validate a cloud or a stack of clouds: (stack (C, N, d) in X's dtype, leading shape)."""
    X = _validated(X, name)
    if X.ndim < 2 or X.shape[-2] < 1 or X.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., N, d) (tokens x features), "
                         f"got {tuple(X.shape)}.")
    return X.reshape((-1,) + tuple(X.shape[-2:])), tuple(X.shape[:-2])


def _unbatch(values, lead: tuple):
    """Reshape per-cloud results (C, ...) to lead + (...); one cloud's scalar becomes a float."""
    values = np.asarray(values)
    out = values.reshape(lead + values.shape[1:])
    return float(out) if out.ndim == 0 else out


def _check_k(k: int, n: int, what: str = "k") -> None:
    if not 1 <= k <= n - 1:
        raise ValueError(f"{what}={k} neighbours need 1 <= {what} <= N - 1 = {n - 1}; use a "
                         f"smaller {what} or clouds with more tokens.")


@functools.cache
def _thread_controller():
    return ThreadpoolController()


def _one_thread(C):
    """One BLAS / OpenMP thread while the CPU tables of a stack of clouds are built. Measured on 2
    cores (30 clouds of 1024 x 576, interleaved A/B): 39 ms per cloud against 46 ms with two
    threads, since most of the work (selection, GRIDE) is single-threaded and idle OpenBLAS / OpenMP
    threads spinning between the calls get in its way. Scoped: the caller's settings come back on
    exit. Tensors on an accelerator are left alone."""
    if _is_torch(C) and C.device.type != "cpu":
        return contextlib.nullcontext()
    return _thread_controller().limit(limits=1)
