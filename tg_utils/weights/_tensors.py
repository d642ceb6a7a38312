"""Small tensor helpers shared by the weights modules: a detached tensor from anything array-like, and
the chunk bounds of a scan over the vocabulary."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x` (tensor or array-like) as a detached tensor, in `dtype` when given."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach()
    return t if dtype is None else t.to(dtype)


def chunks(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive slices of at most `chunk` rows covering range(n)."""
    for i in range(0, n, chunk):
        yield i, min(i + chunk, n)
