"""Stand-ins shared by the notebook-07 tests: a UMAP that skips the fit (the fit itself is tested in
tests/test_weights.py, whose first call compiles numba for minutes)."""
from __future__ import annotations

import numpy as np
import torch

from tg_utils import weights as W


def fake_umap(calls: list | None = None):
    """A drop-in for weights.umap.umap_trajectory: coordinates are the first three normed state features;
    each call's arguments are appended to `calls` when given."""
    def fake(W_E, states, n_neighbors=15, seed=0, n_fit=10000, n_epochs=None, norm=None, extra=None, **kw):
        if calls is not None:
            calls.append(dict(W_E=W_E, states=states, norm=norm, n_fit=n_fit, n_neighbors=n_neighbors,
                              extra=extra, **kw))
        S = torch.as_tensor(states, dtype=torch.float64)
        L, T, d = S.shape
        normed = W.as_norm(norm)(S.reshape(-1, d)).reshape(L, T, d)
        return W.UmapTrajectory(coords=normed[..., :3].numpy(), norms=torch.linalg.vector_norm(S, dim=-1).numpy(),
                                normed_norms=torch.linalg.vector_norm(normed, dim=-1).numpy(),
                                embedding_coords=W_E[:n_fit, :3].double().numpy(), fit_ids=np.arange(n_fit),
                                reducer=None, extra_coords=None if extra is None else extra[:, :3].double().numpy())
    return fake
