"""Probe heads beyond the linear spine: the reference MLP, attention-MIL over slices, kNN.

All heads train on cached frozen features only; the encoder never trains. Each head has
``fit(X, y)``, ``predict(X)``, ``fit_info`` (a `ProbeFit`) and ``classes_`` like
`brainbench.probes`.
"""

from __future__ import annotations

from typing import Any

from brainbench.errors import BenchError

HEADS = ("linear", "mlp", "attention", "knn")


def make_head(name: str, kind: str, *, seed: int, params: dict[str, Any] | None = None,
              target_transform: str | None = None) -> Any:
    """A fresh, unfitted head `name` for a task kind (params only for the torch heads)."""
    if name == "linear":
        from brainbench.probes import make_probe

        return make_probe(kind, seed=seed,
                          target_transform=target_transform if kind == "regression" else None)
    if name == "mlp":
        from brainbench.heads.mlp import MLPHead

        return MLPHead(kind, seed=seed, params=params, target_transform=target_transform)
    if name == "attention":
        from brainbench.heads.attention import AttentionHead

        return AttentionHead(kind, seed=seed, params=params, target_transform=target_transform)
    if name == "knn":
        from brainbench.heads.knn import KNNHead

        return KNNHead(kind, seed=seed, target_transform=target_transform)
    raise BenchError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")
